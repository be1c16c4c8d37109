// Parameters for infra/main.bicep:
//   az deployment group create -g <resource-group> -f infra/main.bicep -p infra/main.bicepparam
using 'main.bicep'

// Letters and digits only: it also prefixes the storage account name.
param namePrefix = 'vault'
param storageSku = 'Standard_LRS'
param vaultContainerName = 'vault'
param stagingContainerName = 'vault-staging'
param taskHubName = 'vault'
param waitSeconds = 30
param leaseSeconds = 60
param purgeAfterHours = 24
param readUrlSeconds = 3600
param segmentBytes = 1099511627776
param maximumInstanceCount = 100
param instanceMemoryMB = 2048
param softDeleteRetentionDays = 7
param sealedCoolAfterDays = 30
param sealedColdAfterDays = 90
// Object ids of the consumers (users, groups or service principals) that read streams directly.
param readerPrincipalIds = []
param readerPrincipalType = 'ServicePrincipal'
