// The vault account's Blob service settings: soft delete, and the one CORS rule the console needs
// (GET and HEAD of the logs, by Range, from the Function App's own origin only). A module of its
// own because the rule names the app's host name, known once the app exists, while the app's
// deployment container lives in this service.
param storageAccountName string

@description('Days a deleted blob or container can be restored.')
param softDeleteRetentionDays int

@description('The console\'s origin (https://<the app\'s host name>): the only origin allowed to read blobs from a browser.')
param consoleOrigin string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    // Soft delete: an accidentally deleted stream (blob) or container can be restored.
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    cors: {
      corsRules: [
        {
          allowedOrigins: [consoleOrigin]
          allowedMethods: ['GET', 'HEAD']
          allowedHeaders: ['range', 'x-ms-version', 'x-ms-date']
          exposedHeaders: ['content-range', 'content-length', 'accept-ranges']
          maxAgeInSeconds: 3600
        }
      ]
    }
  }
}
