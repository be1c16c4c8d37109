#!/usr/bin/env bash
# Deploys Message Vault to Azure: the resource group, infra/main.bicep (Function App on Flex
# Consumption, storage, Application Insights), then the app's code. Safe to run again: every step
# converges on the same state, and a rerun republishes the code.
#
#   infra/deploy.sh RESOURCE_GROUP [LOCATION] [NAME_PREFIX]
#
# LOCATION defaults to the group's location if it exists, else westeurope. NAME_PREFIX (3-11
# lowercase letters and digits) overrides namePrefix in infra/main.bicepparam.
set -euo pipefail

usage() {
    echo "usage: infra/deploy.sh RESOURCE_GROUP [LOCATION] [NAME_PREFIX]" >&2
    exit 2
}

die() {
    echo "deploy: $*" >&2
    exit 1
}

if [ $# -lt 1 ] || [ $# -gt 3 ]; then usage; fi
case "$1" in -h | --help) usage ;; esac
group=$1
prefix=${3:-}
if [ -n "$prefix" ] && ! [[ $prefix =~ ^[a-z0-9]{3,11}$ ]]; then
    die "NAME_PREFIX must be 3-11 lowercase letters and digits, got '$prefix'"
fi

cd "$(dirname "$0")/.."

command -v az >/dev/null \
    || die "the Azure CLI (az) is missing: https://learn.microsoft.com/cli/azure/install-azure-cli"
command -v func >/dev/null \
    || die "Azure Functions Core Tools 4 (func) is missing: https://learn.microsoft.com/azure/azure-functions/functions-run-local"
func_version=$(func --version)
[[ $func_version == 4.* ]] || die "Azure Functions Core Tools 4 is needed, found $func_version"
az account show --output none 2>/dev/null || die "not signed in to Azure: run az login"

existing_location=$(az group show --name "$group" --query location --output tsv 2>/dev/null || true)
location=${2:-${existing_location:-westeurope}}

echo "deploy: resource group $group in $location"
az group create --name "$group" --location "$location" --output none

deployment=message-vault
parameters=(--parameters infra/main.bicepparam)
[ -z "$prefix" ] || parameters+=(--parameters "namePrefix=$prefix")
echo "deploy: infra/main.bicep (deployment $deployment)"
az deployment group create \
    --resource-group "$group" \
    --name "$deployment" \
    --template-file infra/main.bicep \
    "${parameters[@]}" \
    --output none

output() {
    az deployment group show --resource-group "$group" --name "$deployment" \
        --query "properties.outputs.$1.value" --output tsv
}
app=$(output functionAppName)
url=$(output functionAppUrl)
storage=$(output storageAccountName)
if [ -z "$app" ] || [ -z "$url" ]; then
    die "the deployment returned no functionAppName/functionAppUrl outputs"
fi

# On a first deployment the app's role assignments (made just above) take minutes to reach the
# storage service, and until they do the platform cannot write the package with the app's
# identity: publishing fails. Try again, a bounded number of times.
attempts=${DEPLOY_PUBLISH_ATTEMPTS:-8}
pause=${DEPLOY_RETRY_SECONDS:-30}
for attempt in $(seq 1 "$attempts"); do
    echo "deploy: publishing the code to $app (attempt $attempt of $attempts)"
    if func azure functionapp publish "$app" --python; then
        break
    fi
    if [ "$attempt" -eq "$attempts" ]; then
        die "publishing failed $attempts times; run infra/deploy.sh again (it converges)"
    fi
    echo "deploy: publishing failed; new role assignments can take minutes to apply, retrying in ${pause} s" >&2
    sleep "$pause"
done

cat <<EOF

Message Vault is deployed.
  API:     $url
  storage: $storage

The producers' function key (send it as x-functions-key, or VaultClient(url, key=...)):
  az functionapp keys list -g $group -n $app --query functionKeys.default -o tsv

Check it end to end:
  .venv/bin/python scripts/smoke.py $url --key "\$(az functionapp keys list -g $group -n $app --query functionKeys.default -o tsv)"

Tear it all down:
  az group delete -n $group --yes
EOF
