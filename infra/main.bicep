// Message Vault: a Function App on the Flex Consumption plan (Python 3.13), the storage account
// that holds the streams (page blobs) and the Durable Functions task hub, and Application
// Insights. No keys anywhere: the app reaches storage and App Insights with its system-assigned
// managed identity, and shared-key access to the account is disabled.
//
//   az deployment group create -g <resource-group> -f infra/main.bicep -p infra/main.bicepparam
//   func azure functionapp publish <functionAppName>
targetScope = 'resourceGroup'

@description('Location of every resource; Flex Consumption is available in a subset of regions.')
param location string = resourceGroup().location

@description('Prefix of the resource names.')
@minLength(3)
@maxLength(11)
param namePrefix string = 'vault'

@description('Function App name (globally unique: it becomes <name>.azurewebsites.net).')
param functionAppName string = '${namePrefix}-${uniqueString(resourceGroup().id)}'

@description('Storage account name (3-24 lowercase letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param storageAccountName string = toLower('${namePrefix}${uniqueString(resourceGroup().id)}')

@description('Replication of the vault storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_LRS'

@description('The streams\' blob container (VAULT_CONTAINER).')
param vaultContainerName string = 'vault'

@description('Where large batches wait for their stream\'s writer (VAULT_STAGING_CONTAINER).')
param stagingContainerName string = 'vault-staging'

@description('Durable Functions task hub (VAULT_TASK_HUB, read by host.json): 3-45 letters and digits, starting with a letter.')
@minLength(3)
@maxLength(45)
param taskHubName string = 'vault'

@description('How long a POST waits for its commit before answering 202 (VAULT_WAIT_SECONDS); the front end drops a request after 230 s, and the app answers by 200 s from its arrival whatever this says.')
@minValue(0)
@maxValue(200)
param waitSeconds int = 30

@description('The writers\' blob lease in seconds (VAULT_LEASE_SECONDS): Azure allows 15-60.')
@minValue(15)
@maxValue(60)
param leaseSeconds int = 60

@description('Finished appends\' orchestration history is purged after this many hours (VAULT_PURGE_AFTER_HOURS).')
@minValue(1)
param purgeAfterHours int = 24

@description('How long the read URLs that GET /api/streams/{stream} hands out last, in seconds (VAULT_READ_URL_SECONDS); a user delegation SAS lasts 7 days at most. vault_core.open_reader given a stream\'s API URL renews them as they expire.')
@minValue(1)
@maxValue(604800)
param readUrlSeconds int = 3600

@description('A stream rolls into a new segment once its newest segment holds this many bytes (VAULT_SEGMENT_BYTES); sealed segments are block blobs that the lifecycle rules tier. 1 TiB by default: most streams never roll.')
@minValue(4096)
param segmentBytes int = 1099511627776

@description('Flex Consumption: the most instances each group of functions (HTTP, Durable, the purge timer) scales out to. Some regions still require at least 40.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Flex Consumption: memory of each instance. Not 512 MB: a stream entity holds up to 64 MiB of staged batches at once, and an HTTP instance up to httpPerInstanceConcurrency request bodies of up to 16 MiB, each parsed into a copy or two.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Flex Consumption: HTTP requests one instance serves at once. Python\'s default is 1, an instance per producer waiting for its commit; the HTTP functions are async and mostly wait on Durable, so one instance serves many.')
@minValue(1)
@maxValue(32)
param httpPerInstanceConcurrency int = 16

@description('Flex Consumption: instances kept running for the Durable group (the stream entities and the appends\' orchestrations). With none, the first append after idle waits for an instance to start and claim the task hub\'s partitions.')
@minValue(0)
param durableAlwaysReady int = 1

@description('Flex Consumption: instances kept running for the HTTP group. With none (the default), the first request after idle waits for one instance to start, a few seconds; each costs the baseline rate while idle.')
@minValue(0)
param httpAlwaysReady int = 0

@description('Days a deleted blob or container can be restored (blob soft delete).')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 7

@description('Days after a stream\'s segment is sealed (a block blob) that Azure moves it to the Cool tier.')
@minValue(1)
param sealedCoolAfterDays int = 30

@description('Days after a stream\'s segment is sealed that Azure moves it to the Cold tier (more than sealedCoolAfterDays).')
@minValue(2)
param sealedColdAfterDays int = 90

@description('Object ids of principals (consumers) granted Storage Blob Data Reader on the streams\' containers only (the streams\' container, and each stream\'s own container <vaultContainerName>-<stream>), to read streams directly, and Storage Table Data Contributor on the consumer checkpoint table only.')
param readerPrincipalIds array = []

@description('Principal type of readerPrincipalIds.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param readerPrincipalType string = 'ServicePrincipal'

@description('Log Analytics retention in days.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

param tags object = {}

// The zip that `func azure functionapp publish` uploads lives in this container (Flex Consumption
// deploys from blob storage, read with the app's identity).
var deploymentContainerName = 'app-package-${take(toLower(functionAppName), 32)}'

// Built-in role definitions (ids are the same in every tenant).
var roles = {
  // Read/write/delete blobs and containers, leases, page writes, user delegation keys, and
  // blob ACL/ownership operations. The Functions host with an identity-based AzureWebJobsStorage
  // documents Storage Blob Data Owner as the role it needs (host locks, keys, Durable Functions
  // lease blobs), and the vault writer also needs leases and page writes on the streams' blobs
  // and user delegation keys for read SAS URLs. Blob Data Contributor + Blob Delegator would
  // cover the vault itself, but we follow the documented requirement of the host.
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  // Consumers: read blobs and get user delegation keys.
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  // Durable Functions task hub: control and work-item queues.
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // Durable Functions task hub: History and Instances tables; consumers: their checkpoints.
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  // Send telemetry to an Application Insights resource that accepts only Entra ID.
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

var appStorageRoles = [
  roles.storageBlobDataOwner
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
]

// --- Monitoring ---------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-insights-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Only Entra ID-authenticated telemetry is accepted: the connection string alone is not
    // enough to write to it (APPLICATIONINSIGHTS_AUTHENTICATION_STRING below).
    DisableLocalAuth: true
  }
}

// --- Storage ------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:No VNet in this template: the Flex Consumption app and the consumers reach the account over its public endpoint, every request with an Entra ID token (shared keys are disabled).
  //checkov:skip=CKV_AZURE_59:Consumers read streams directly from the public blob endpoint (Entra ID or user delegation SAS); anonymous access and shared keys are disabled.
  //checkov:skip=CKV_AZURE_206:Replication is the storageSku parameter; LRS is the cheap default, choose ZRS or GZRS for production.
  //checkov:skip=CKV_AZURE_43:The name is a parameter whose default checkov cannot evaluate; @minLength/@maxLength and toLower(uniqueString()) keep it within the naming rules.
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: storageSku
  }
  properties: {
    accessTier: 'Hot'
    // Page blobs (the streams' format) are not supported by accounts with a hierarchical
    // namespace (Data Lake Storage Gen2): the account must stay a flat blob namespace.
    isHnsEnabled: false
    allowBlobPublicAccess: false
    // Entra ID only: the Functions host (AzureWebJobsStorage__accountName), Durable Functions,
    // the deployment package and VAULT_STORE all authenticate with the managed identity.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

// Its settings (soft delete, the console's CORS rule) are in blob-service.bicep, deployed once
// the app's host name is known.
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

module blobServiceSettings 'blob-service.bicep' = {
  name: 'blob-service'
  params: {
    storageAccountName: storage.name
    softDeleteRetentionDays: softDeleteRetentionDays
    consoleOrigin: 'https://${functionApp.properties.defaultHostName}'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// Consumer groups' checkpoints (vault_core's table `vaultcheckpoints`), made here so that
// consumers get rights on this one table only, not on the task hub's tables beside it.
resource checkpointTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: 'vaultcheckpoints'
}

resource vaultContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: vaultContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource stagingContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: stagingContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Staged batches are claim checks (block blobs) that their orchestration consumes within
// seconds; whatever a failed orchestration leaves behind is garbage after a day.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-staged-batches'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${stagingContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: 1
                }
              }
            }
          }
        }
        {
          // Sealed segments carry this blob index tag (the vault sets it when it seals one): old
          // stream data moves to cheaper tiers, read as before by the same URLs (Cold, like Cool,
          // is online). Nothing else of the account is tiered.
          name: 'tier-sealed-segments'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              blobIndexMatch: [
                {
                  name: 'vault'
                  op: '=='
                  value: 'sealed-segment'
                }
              ]
            }
            actions: {
              baseBlob: {
                tierToCool: {
                  daysAfterCreationGreaterThan: sealedCoolAfterDays
                }
                tierToCold: {
                  daysAfterCreationGreaterThan: max(sealedColdAfterDays, sealedCoolAfterDays + 1)
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    stagingContainer
  ]
}

// --- Function App -------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:Zone redundancy of a Flex Consumption plan is available in a subset of regions only; enabling it unconditionally would fail deployments elsewhere.
  name: '${namePrefix}-plan-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // Linux.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_222:The producers' HTTP API is public by design (producers call the function URLs, authorized with function keys).
  //checkov:skip=CKV_AZURE_17:Producers authenticate with function keys over HTTPS, not client certificates.
  //checkov:skip=CKV_AZURE_212:Flex Consumption keeps always-ready instances per function group (functionAppConfig.scaleAndConcurrency.alwaysReady: one for the Durable group), which this App Service check does not read.
  //checkov:skip=CKV_AZURE_213:App Service health checks are not offered on Flex Consumption; the anonymous GET /api/health serves external probes.
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Identity-based host storage (leases, keys, timers) and Durable Functions task hub
        // (queues, tables, blobs): no connection string; the endpoints are derived from the
        // account name and the identity comes from the system-assigned managed identity.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          // The system-assigned identity authenticates telemetry (App Insights has local auth
          // disabled).
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD'
        }
        {
          // An account URL: vault_core opens it with DefaultAzureCredential (the app's identity).
          name: 'VAULT_STORE'
          value: 'https://${storage.name}.blob.${environment().suffixes.storage}'
        }
        {
          name: 'VAULT_CONTAINER'
          value: vaultContainerName
        }
        {
          name: 'VAULT_STAGING_CONTAINER'
          value: stagingContainerName
        }
        {
          name: 'VAULT_WAIT_SECONDS'
          value: string(waitSeconds)
        }
        {
          name: 'VAULT_LEASE_SECONDS'
          value: string(leaseSeconds)
        }
        {
          name: 'VAULT_TASK_HUB'
          value: taskHubName
        }
        {
          name: 'VAULT_PURGE_AFTER_HOURS'
          value: string(purgeAfterHours)
        }
        {
          name: 'VAULT_READ_URL_SECONDS'
          value: string(readUrlSeconds)
        }
        {
          name: 'VAULT_SEGMENT_BYTES'
          value: string(segmentBytes)
        }
        {
          // The Functions host refuses a larger body (with a 500) before it buffers it: the API's
          // 16 MiB, and 1 MiB more so that a body a little over gets the API's own 413.
          name: 'FUNCTIONS_REQUEST_BODY_SIZE_LIMIT'
          value: '17825792'
        }
        // No FUNCTIONS_WORKER_RUNTIME: on Flex Consumption the runtime comes from
        // functionAppConfig.runtime and the setting is rejected.
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        // HTTP functions and the Durable triggers scale as two groups, on instances of their own:
        // every append's start crosses from an HTTP instance to a Durable one.
        alwaysReady: [
          {
            name: 'durable'
            instanceCount: durableAlwaysReady
          }
          {
            name: 'http'
            instanceCount: httpAlwaysReady
          }
        ]
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.13'
      }
    }
  }
  dependsOn: [
    deploymentContainer
  ]
}

// Publishing goes through Entra ID (func/az CLI with a token), never with basic-auth
// (user/password) credentials on FTP or the SCM site.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// --- Role assignments ---------------------------------------------------------------------
// Scoped to the storage account, not the resource group: the app needs nothing else. Names are
// deterministic (guid of scope, principal and role) so that redeployments are idempotent.
// The host starts before these propagate on a first deployment and retries until they do.

resource appStorageRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in appStorageRoles: {
    name: guid(storage.id, functionApp.id, roleId)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: functionApp.identity.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionApp.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Consumers read the streams' container and nothing else of the account: not the host's keys
// (azure-webjobs-secrets), the task hub's payloads (its large-message blobs, queues and tables),
// the staged batches or the deployment package.
resource readerRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in readerPrincipalIds: {
    name: guid(vaultContainer.id, principalId, roles.storageBlobDataReader)
    scope: vaultContainer
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
      principalId: principalId
      principalType: readerPrincipalType
    }
  }
]

// Each stream made since segments lives in a container of its own, made at run time, so no
// deployment can name it as a scope: consumers read blobs of the account only where the
// container's name starts with '<vaultContainerName>-' and is not the staging container. (The
// role also lets them list the account's container names; not the contents of any other.)
resource readerStreamAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in readerPrincipalIds: {
    name: guid(storage.id, principalId, roles.storageBlobDataReader, 'stream-containers')
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
      principalId: principalId
      principalType: readerPrincipalType
      conditionVersion: '2.0'
      condition: '((!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read\'})) OR (@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringStartsWith \'${vaultContainerName}-\' AND NOT @Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals \'${stagingContainerName}\'))'
    }
  }
]

resource readerCheckpointAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in readerPrincipalIds: {
    name: guid(checkpointTable.id, principalId, roles.storageTableDataContributor)
    scope: checkpointTable
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
      principalId: principalId
      principalType: readerPrincipalType
    }
  }
]

// --- Outputs ------------------------------------------------------------------------------

output functionAppName string = functionApp.name
output functionAppUrl string = 'https://${functionApp.properties.defaultHostName}/api'
output storageAccountName string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
