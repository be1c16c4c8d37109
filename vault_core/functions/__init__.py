"""The Function App's logic, behind the thin function_app.py: HTTP functions validate a batch and
hand it to an orchestration (one per stream and Idempotency-Key), which calls the stream's durable
entity; the entity is the only code in the app that appends, through the vault_core writer.
Imported only by the Function App (it needs azure-functions and its durable extension).

    settings.py       the app's settings, and what a worker process keeps: stores, writers, pools
    partitions.py     where the runtime runs an append: its instance id, on its entity's partition
    http_handlers.py  the HTTP functions, each error answered as a problem by one wrapper
    orchestration.py  the append orchestration, and the purge of finished ones' history
    entity.py         the stream's entity, which appends, and the staging of large batches

How it runs on the Durable runtime (Azure Storage provider):
- The runtime runs a stream's entity in one worker process at a time, but moves it with its
  control-queue partition whenever the app scales or an instance is recycled. The entity therefore
  opens its writer with `takeover=True`: the new owner fences the old one at once instead of
  waiting for its blob lease to lapse.
- The runtime hands an entity every operation queued for it (up to maxEntityOperationBatchSize) in
  one invocation. The entity appends them together, one data write and one commit for the lot,
  each batch atomic with its own result, so that throughput grows with the number of producers.
- Delivery is at least once: a batch whose worker dies is run again, possibly elsewhere. Each
  append carries its Idempotency-Key as batch id, so running it again appends nothing.
- A problem that may pass (the stream held by another writer, a lost ownership, a storage error)
  is retried inside the orchestration with durable timers, so a 202's Location resolves to the
  final answer.
"""
