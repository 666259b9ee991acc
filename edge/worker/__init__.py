"""The inference worker, one small module per stage (read them in this order):

- `state`    `StreamState`: ring, clip grid, pending clips, gate, memory, monitors of one stream
- `collect`  collection: complete clips -> pending (each once; oldest dropped when behind)
- `encode`   encoding: pending clips -> audio + gate reading + AF-CLAP tokens (one batched call)
- `remember` memory: encoded clips -> `StreamMemory`; windows out for queries
- `queries`  query scheduling: which monitors are due, query groups, deadlines
- `execute`  query execution: one group -> shared memory/K/V -> answers (the only decoder caller)
- `emit`     result building: `MonitorResult`s and the hand-off to the sink
- `loop`     `InferenceWorker`: the step that turns the stages, and the thread loop
"""

from .loop import InferenceWorker
from .state import StreamState, clips_for

__all__ = ["InferenceWorker", "StreamState", "clips_for"]
