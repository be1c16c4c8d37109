#!/usr/bin/env bash
# Runs Azurite, Microsoft's Azure Storage emulator (blobs, queues, tables), from this project's
# node_modules, on 127.0.0.1, keeping its data in .azurite/ (or AZURITE_LOCATION). Prints the
# connection string to use, then serves until Ctrl-C. AZURITE_PORT moves it from 10000 (blobs;
# queues and tables on the next two ports).
#
#   scripts/azurite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x node_modules/.bin/azurite ] || npm ci --no-audit --no-fund --loglevel=error
blob=${AZURITE_PORT:-10000}
queue=$((blob + 1))
table=$((blob + 2))
location=${AZURITE_LOCATION:-.azurite}
# A port in use is said before anything is printed, rather than as Azurite's EADDRINUSE after.
for port in "$blob" "$queue" "$table"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port on 127.0.0.1 is in use (Azurite takes $blob to $table): is an Azurite running" \
            "already? Pick other ports with AZURITE_PORT, e.g. AZURITE_PORT=20000 scripts/azurite.sh" >&2
        exit 1
    fi
done
mkdir -p "$location"
if [ "$blob" = 10000 ]; then
    connection="UseDevelopmentStorage=true"
else
    # The emulator's account and key are public, the same for every Azurite (Microsoft documents
    # them): this is no secret.
    account=devstoreaccount1
    key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    connection="DefaultEndpointsProtocol=http;AccountName=$account;AccountKey=$key"
    connection+=";BlobEndpoint=http://127.0.0.1:$blob/$account;QueueEndpoint=http://127.0.0.1:$queue/$account"
    connection+=";TableEndpoint=http://127.0.0.1:$table/$account;"
fi
echo "export AZURE_STORAGE_CONNECTION_STRING='$connection'"
# --skipApiVersionCheck: the Azure SDKs speak newer service versions than Azurite knows of, and
# their requests are otherwise refused ("API version ... is not supported").
exec node_modules/.bin/azurite --silent --location "$location" --skipApiVersionCheck --loose \
    --blobHost 127.0.0.1 --blobPort "$blob" --queueHost 127.0.0.1 --queuePort "$queue" \
    --tableHost 127.0.0.1 --tablePort "$table"
