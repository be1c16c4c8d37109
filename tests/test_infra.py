"""The Bicep templates under infra/, checked offline: parsed with pycep (the parser checkov uses)
and asserted on the parsed tree, then scanned with checkov. Nothing here reaches Azure."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from tests.support import ROOT

INFRA = ROOT / "infra"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

STORAGE = "Microsoft.Storage/storageAccounts"
SITE = "Microsoft.Web/sites"
PLAN = "Microsoft.Web/serverfarms"
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"

BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

APP_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "VAULT_STORE",
    "VAULT_CONTAINER",
    "VAULT_STAGING_CONTAINER",
    "VAULT_WAIT_SECONDS",
    "VAULT_LEASE_SECONDS",
    "VAULT_TASK_HUB",
    "VAULT_PURGE_AFTER_HOURS",
    "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT",
}


@pytest.fixture(scope="module")
def trees() -> dict[Path, dict[str, Any]]:
    files = sorted(INFRA.rglob("*.bicep"))
    assert INFRA / "main.bicep" in files
    parser = BicepParser()
    return {path: parser.parse(file_path=path) for path in files}


@pytest.fixture(scope="module")
def main(trees: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    return trees[INFRA / "main.bicep"]


def resources(trees: dict[Path, dict[str, Any]], kind: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(file tree, resource body) of every resource of a type; a loop's body is its item."""
    found = []
    for tree in trees.values():
        for resource in tree.get("resources", {}).values():
            if resource["type"] == kind and not resource["existing"]:
                config = resource["config"]
                found.append((tree, config["config"] if "loop_type" in config else config))
    return found


def one(trees: dict[Path, dict[str, Any]], kind: str) -> dict[str, Any]:
    found = resources(trees, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0][1]


def resolve(tree: dict[str, Any], value: Any) -> Any:
    """A variable reference or `variable.property` -> its value (literals are returned as is)."""
    variables = tree.get("variables", {})
    if isinstance(value, str) and value in variables:
        return resolve(tree, variables[value]["value"])
    if isinstance(value, list):
        return [resolve(tree, item) for item in value]
    if isinstance(value, dict) and value.get("operator", {}).get("type") == "property_accessor":
        operands = value["operator"]["operands"]
        holder = resolve(tree, operands["operand_1"])
        if isinstance(holder, dict) and isinstance(operands["operand_2"], str):
            return resolve(tree, holder[operands["operand_2"]])
    return value


def role_ids(tree: dict[str, Any], resource: dict[str, Any]) -> list[str]:
    """The role definition GUIDs a (possibly looped) role assignment resource grants."""
    config = resource["config"]
    body = config["config"] if "loop_type" in config else config
    function = body["properties"]["roleDefinitionId"]["function"]
    assert function["type"] == "subscription_resource_id"
    assert function["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
    name = function["parameters"]["resource_name_1"]
    loop = config.get("loop_type", {}).get("detail", {})
    if name == loop.get("item_name"):
        return resolve(tree, loop["array_name"])
    return [resolve(tree, name)]


def accessor_path(value: Any) -> list[str]:
    """`a.b.c` -> ["a", "b", "c"]."""
    if isinstance(value, str):
        return [value]
    operands = value["operator"]["operands"]
    assert value["operator"]["type"] == "property_accessor"
    return [operands["operand_1"], *accessor_path(operands["operand_2"])]


def test_every_template_parses(trees: dict[Path, dict[str, Any]]) -> None:
    for path, tree in trees.items():
        assert tree.get("resources") or tree.get("modules"), f"{path} declares nothing"


def test_storage_account_is_locked_down(trees: dict[Path, dict[str, Any]]) -> None:
    account = one(trees, STORAGE)
    assert account["kind"] == "StorageV2"
    properties = account["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True
    # Page blobs, the streams' format, need a flat (non-HNS) namespace.
    assert properties["isHnsEnabled"] is False


def test_storage_sku_is_a_standard_parameter(main: dict[str, Any]) -> None:
    account = one({INFRA: main}, STORAGE)
    parameter = main["parameters"][account["sku"]["name"]]
    assert parameter["default"] == "Standard_LRS"
    allowed = next(d["argument"] for d in parameter["decorators"] if d["type"] == "allowed")
    assert all(sku.startswith("Standard_") for sku in allowed)


def test_blob_soft_delete(trees: dict[Path, dict[str, Any]]) -> None:
    service = one(trees, f"{STORAGE}/blobServices")["properties"]
    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        assert service[policy]["enabled"] is True
        assert service[policy]["days"]


def test_blobs_are_readable_from_the_consoles_origin_only(trees: dict[Path, dict[str, Any]]) -> None:
    [rule] = one(trees, f"{STORAGE}/blobServices")["properties"]["cors"]["corsRules"]
    assert sorted(rule["allowedMethods"]) == ["GET", "HEAD"]
    assert rule["allowedOrigins"] == ["consoleOrigin"]  # a parameter, not "*"
    assert "range" in rule["allowedHeaders"]
    modules = [m for tree in trees.values() for m in tree.get("modules", {}).values()]
    [module] = [m for m in modules if m["detail"]["path"] == "blob-service.bicep"]
    assert module["config"]["params"]["consoleOrigin"] == "https://${functionApp.properties.defaultHostName}"


def test_containers(main: dict[str, Any]) -> None:
    containers = resources({INFRA: main}, f"{STORAGE}/blobServices/containers")
    names = {resolve(main, body["name"]) for _, body in containers}
    parameters = main["parameters"]
    assert {parameters[name]["default"] for name in names if name in parameters} == {"vault", "vault-staging"}
    assert len(containers) == 3, "the streams', the staging and the deployment containers"
    for _, body in containers:
        assert body["properties"]["publicAccess"] == "None"


def test_staging_lifecycle_rule(main: dict[str, Any]) -> None:
    policy = one({INFRA: main}, f"{STORAGE}/managementPolicies")
    rule, _tiering = policy["properties"]["policy"]["rules"]
    assert rule["enabled"] is True
    definition = rule["definition"]
    assert definition["actions"]["baseBlob"]["delete"] == {"daysAfterModificationGreaterThan": 1}
    assert definition["filters"]["blobTypes"] == ["blockBlob"]  # staged batches are block blobs
    [prefix] = definition["filters"]["prefixMatch"]
    assert prefix == "${stagingContainerName}/"
    assert main["parameters"]["stagingContainerName"]["default"] == "vault-staging"


def test_sealed_segments_are_tiered_by_their_tag(main: dict[str, Any]) -> None:
    from vault_core.stores.blob import SEALED_TAG

    policy = one({INFRA: main}, f"{STORAGE}/managementPolicies")
    _staging, rule = policy["properties"]["policy"]["rules"]
    definition = rule["definition"]
    # By the tag the vault puts on what it seals, so no other block blob (staged batches) moves.
    [(name, value)] = SEALED_TAG.items()
    assert definition["filters"] == {
        "blobTypes": ["blockBlob"],
        "blobIndexMatch": [{"name": name, "op": "==", "value": value}],
    }
    actions = definition["actions"]["baseBlob"]
    assert actions["tierToCool"] == {"daysAfterCreationGreaterThan": "sealedCoolAfterDays"}
    assert "sealedColdAfterDays" in str(actions["tierToCold"]["daysAfterCreationGreaterThan"])
    assert main["parameters"]["sealedCoolAfterDays"]["default"] == 30
    assert main["parameters"]["sealedColdAfterDays"]["default"] == 90


def test_flex_consumption_plan(trees: dict[Path, dict[str, Any]]) -> None:
    plan = one(trees, PLAN)
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True


def test_function_app_security(trees: dict[Path, dict[str, Any]]) -> None:
    app = one(trees, SITE)
    assert app["kind"] == "functionapp,linux"
    assert app["identity"] == {"type": "SystemAssigned"}
    properties = app["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["ftpsState"] == "Disabled"


def test_function_app_config(trees: dict[Path, dict[str, Any]]) -> None:
    config = one(trees, SITE)["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.13"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "SystemAssignedIdentity"}
    assert {"maximumInstanceCount", "instanceMemoryMB"} <= set(config["scaleAndConcurrency"])


def decorator(parameter: dict[str, Any], kind: str) -> Any:
    return next((d["argument"] for d in parameter["decorators"] if d["type"] == kind), None)


def module_constant(path: Path, name: str) -> Any:
    """A module-level constant of the app's code, read without importing it (the Function App's
    dependencies are not in this environment)."""
    import ast

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            # A literal or arithmetic on literals (16 * 1024 * 1024): nothing else is evaluated.
            expression = ast.Expression(node.value)
            assert all(isinstance(n, ast.expr | ast.operator) for n in ast.walk(node.value)), name
            assert not any(isinstance(n, ast.Name | ast.Call | ast.Attribute) for n in ast.walk(node.value))
            return eval(compile(expression, str(path), "eval"), {"__builtins__": {}})
    raise AssertionError(f"{name} is not in {path}")


def test_flex_consumption_groups_and_limits(main: dict[str, Any], trees: dict[Path, dict[str, Any]]) -> None:
    """HTTP functions and the Durable triggers scale as two groups: one Durable instance stays
    up (the first append after idle would wait for one to start and claim the partitions); HTTP
    instances serve many requests each (Python's default is one), within their memory."""
    scale = one(trees, SITE)["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    ready = {entry["name"]: entry["instanceCount"] for entry in scale["alwaysReady"]}
    assert ready == {"durable": "durableAlwaysReady", "http": "httpAlwaysReady"}
    parameters = main["parameters"]
    assert parameters["durableAlwaysReady"]["default"] == 1 and parameters["httpAlwaysReady"]["default"] == 0
    assert scale["triggers"]["http"]["perInstanceConcurrency"] == "httpPerInstanceConcurrency"
    concurrency = parameters["httpPerInstanceConcurrency"]
    assert concurrency["default"] >= 8 and decorator(concurrency, "max_value") <= 32
    # An entity holds up to 64 MiB of staged batches; 512 MB instances are not offered.
    assert 512 not in decorator(parameters["instanceMemoryMB"], "allowed")
    assert decorator(parameters["maximumInstanceCount"], "min_value") == 1


def test_the_wait_and_the_body_limit_follow_the_hosts_limits(main: dict[str, Any], trees) -> None:
    """The front end drops a request at 230 s: the Bicep's bound on VAULT_WAIT_SECONDS is the
    app's own cap. The host refuses a body over FUNCTIONS_REQUEST_BODY_SIZE_LIMIT before reading
    it: a little over the API's limit, the same where Core Tools run the app."""
    wait_cap = module_constant(ROOT / "vault_core" / "functions" / "http_handlers.py", "MAX_WAIT_SECONDS")
    assert decorator(main["parameters"]["waitSeconds"], "max_value") == wait_cap < 230
    limit = int(app_settings(trees)["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"])
    api_limit = 16 * 1024 * 1024
    assert module_constant(ROOT / "vault_core" / "http_models.py", "MAX_BODY_BYTES") == api_limit
    assert api_limit < limit <= api_limit + 2**20
    local = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert int(local["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"]) == limit


def test_basic_publishing_credentials_disabled(trees: dict[Path, dict[str, Any]]) -> None:
    policies = resources(trees, f"{SITE}/basicPublishingCredentialsPolicies")
    assert {body["name"]: body["properties"]["allow"] for _, body in policies} == {"ftp": False, "scm": False}


def app_settings(trees: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    return {s["name"]: s["value"] for s in one(trees, SITE)["properties"]["siteConfig"]["appSettings"]}


def bicep_app_setting_names() -> set[str]:
    """The app settings the template sets (tests/test_settings.py checks them against the code)."""
    main_file = INFRA / "main.bicep"
    return set(app_settings({main_file: BicepParser().parse(file_path=main_file)}))


def test_app_settings(trees: dict[Path, dict[str, Any]]) -> None:
    settings = app_settings(trees)
    assert set(settings) >= APP_SETTINGS
    # Flex Consumption takes the runtime from functionAppConfig and rejects this setting.
    assert "FUNCTIONS_WORKER_RUNTIME" not in settings
    # No connection strings: identity-based host storage and an account URL for the vault.
    assert not any(name == "AzureWebJobsStorage" or "ConnectionString" in name for name in settings)
    assert accessor_path(settings["AzureWebJobsStorage__accountName"]) == ["storage", "name"]
    assert settings["VAULT_STORE"].startswith("https://${storage.name}.blob.")
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"


def test_app_role_assignments(main: dict[str, Any]) -> None:
    granted: dict[str, set[str]] = {}
    for resource in main["resources"].values():
        if resource["type"] != ROLE_ASSIGNMENT:
            continue
        config = resource["config"]
        body = config["config"] if "loop_type" in config else config
        assert body["name"]["function"]["type"] == "guid", "role assignment names must be deterministic"
        principal = body["properties"]["principalId"]
        is_app = not isinstance(principal, str) and accessor_path(principal)[0] == "functionApp"
        who = "app" if is_app else principal
        if who == "app":
            assert accessor_path(principal) == ["functionApp", "identity", "principalId"]
            assert body["properties"]["principalType"] == "ServicePrincipal"
        granted.setdefault(who, set()).update(role_ids(main, resource))
    assert granted.pop("app") == {
        BLOB_DATA_OWNER,
        QUEUE_DATA_CONTRIBUTOR,
        TABLE_DATA_CONTRIBUTOR,
        MONITORING_METRICS_PUBLISHER,
    }
    # Consumers: Storage Blob Data Reader for each id in readerPrincipalIds (streams) and Storage
    # Table Data Contributor (checkpoints), and nothing else.
    assert granted == {"principalId": {BLOB_DATA_READER, TABLE_DATA_CONTRIBUTOR}}


def test_consumers_hold_no_data_role_on_the_storage_account(main: dict[str, Any]) -> None:
    """The account holds the host's keys, the task hub's payloads, the staged batches and the
    deployment package: a role of a consumer's there (or wider: the resource group, which is the
    scope of an assignment without one) would reach them all. Only the app's identity may."""
    narrow = {
        "Microsoft.Storage/storageAccounts/blobServices/containers",
        "Microsoft.Storage/storageAccounts/tableServices/tables",
    }
    for name, resource in main["resources"].items():
        if resource["type"] != ROLE_ASSIGNMENT:
            continue
        config = resource["config"]
        body = config["config"] if "loop_type" in config else config
        principal = body["properties"]["principalId"]
        if not isinstance(principal, str) and accessor_path(principal)[0] == "functionApp":
            continue
        scope = body.get("scope")
        condition = body["properties"].get("condition")
        condition = condition and condition.replace("\\'", "'")  # as Bicep escapes quotes
        container_name = "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name]"
        if scope == "storage" and condition is not None:  # streams' own containers: by name only
            assert "StringStartsWith '${vaultContainerName}-'" in condition
            assert f"NOT {container_name} StringEquals '${{stagingContainerName}}'" in condition
            continue
        assert isinstance(scope, str) and main["resources"][scope]["type"] in narrow, (
            f"{name} grants {role_ids(main, resource)} to {principal} on {scope or 'the resource group'}"
        )


def test_reader_principals_parameter(main: dict[str, Any]) -> None:
    from vault_core.stores.tables import TABLE_NAME

    parameter = main["parameters"]["readerPrincipalIds"]
    assert parameter["type"] == "array"
    assert parameter["default"] == []
    loops = {
        name: r["config"].get("loop_type", {}).get("detail", {}).get("array_name")
        for name, r in main["resources"].items()
        if r["type"] == ROLE_ASSIGNMENT
    }
    readers = [main["resources"][name] for name, array in loops.items() if array == "readerPrincipalIds"]
    scopes = {r["config"]["config"]["scope"]: role_ids(main, r) for r in readers}
    # Blobs in the streams' containers only (the account's, under a condition on the container's
    # name); tables only on the checkpoint table, never on the task hub's History and Instances.
    assert scopes == {
        "vaultContainer": [BLOB_DATA_READER],
        "storage": [BLOB_DATA_READER],
        "checkpointTable": [TABLE_DATA_CONTRIBUTOR],
    }
    container = main["resources"]["vaultContainer"]
    assert container["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"
    assert container["config"]["name"] == "vaultContainerName"
    table = main["resources"]["checkpointTable"]
    assert table["type"] == "Microsoft.Storage/storageAccounts/tableServices/tables"
    assert table["config"]["name"] == TABLE_NAME


def test_app_insights_is_workspace_based(trees: dict[Path, dict[str, Any]]) -> None:
    insights = one(trees, "Microsoft.Insights/components")["properties"]
    assert accessor_path(insights["WorkspaceResourceId"]) == ["logAnalytics", "id"]
    assert insights["DisableLocalAuth"] is True
    one(trees, "Microsoft.OperationalInsights/workspaces")


def test_outputs(main: dict[str, Any]) -> None:
    outputs = main["outputs"]
    assert {"functionAppName", "functionAppUrl", "storageAccountName", "blobEndpoint"} <= set(outputs)
    assert outputs["functionAppUrl"]["value"] == "https://${functionApp.properties.defaultHostName}/api"


def test_bicepparam_names_declared_parameters(main: dict[str, Any]) -> None:
    text = (INFRA / "main.bicepparam").read_text()
    assert re.search(r"^using 'main\.bicep'$", text, re.MULTILINE)
    names = re.findall(r"^param (\w+)\s*=", text, re.MULTILINE)
    assert names
    assert set(names) <= set(main["parameters"])


def test_checkov_suppressions_give_reasons() -> None:
    for path in INFRA.rglob("*.bicep"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.fullmatch(r"\s*//\s*checkov:skip=CKV2?_AZURE_\d+:\S.{10,}", line), f"{path}: {line}"


def test_checkov_passes() -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV.relative_to(ROOT)} is missing: run scripts/bootstrap.sh dev")
    run = subprocess.run(
        # --skip-download: no call to Prisma Cloud for guidelines; the checks themselves are local.
        [str(CHECKOV), "-d", "infra", "--framework", "bicep", "--compact", "--skip-download", "-o", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov gave no JSON report (exit {run.returncode}):\n{run.stdout}\n{run.stderr}")
    assert isinstance(report, dict) and report.get("check_type") == "bicep", f"nothing scanned: {report}"
    summary = report["summary"]
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert summary["parsing_errors"] == 0, run.stdout
    assert summary["failed"] == 0 and not failed, "\n".join(failed)
    assert summary["passed"] > 0
    for check in results["skipped_checks"]:
        assert check["check_result"]["suppress_comment"] != "No comment provided", check["check_id"]
    assert run.returncode == 0, run.stderr
