"""Durable intake: the life of a request from the webhook's 202 to `done` or the dead letter.

Two layers, each doing one job:

- The **request store** is the source of truth (`handler_cli.storage`). The webhook writes a
  request there (and its idempotency keys) before answering 202; workers save the document
  after every step (checkpoints), and the final status (`done`, or `failed` = dead letter).
- **huey** carries request ids to workers, runs the worker threads and schedules retries
  (`handler_cli.queue`). Its messages can be lost without harm: the store still says the
  request is open, and the sweep (at start-up, then every minute) puts every open request
  that no message stands for back on the queue. A message that arrives twice is harmless: a
  worker must first *claim* the request (an atomic status change with a lease), and a done
  request cannot be claimed.

The modules:

| module | holds |
| --- | --- |
| `records` | `RequestStatus`, `RequestRecord` and its views, `NewRequest`, `Accepted`, ids |
| `leases` | owner ids, telling a dead owner, `LeaseKeeper` |
| `runner` | `RequestRunner`: claim → chain with checkpoints → done / retrying / failed |
| `writer` | `IntakeWriter`: the webhook's group commit |
| `worker_process` | `WorkerProcess`: `serve`'s low-priority child process |

The operator's story (durability, leases, retries, SIGTERM) is docs/production.md.
"""
