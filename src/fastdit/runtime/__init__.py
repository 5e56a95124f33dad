"""Low-memory runtime: streamed block offload, fp8 weight storage, lazy host loading.

* :mod:`.layout`: a block's tensors as typed views of one flat byte buffer;
* :mod:`.host`: the host store (pinned when the platform can pin), one byte range per block;
* :mod:`.streamer`: the fixed device pool and the block hooks that stream blocks through it;
* :mod:`.fp8`: per-output-channel e4m3 weight quantisation;
* :mod:`.model`: :class:`StreamedTransformer` and :func:`stream_model` (in-memory models);
* :mod:`.lazy`: :func:`load_streamed` (safetensors, memory-mapped, block by block);
* :mod:`.visit`: :func:`~fastdit.runtime.visit.visiting` (a module on the device for a while,
  its host tensors kept: the encoders of ``offload="model"``).

The memory planner that decides what streams is :mod:`fastdit.pipelines.memory`.
"""

from fastdit.runtime.model import StreamedTransformer, make_region, stream_model
from fastdit.runtime.streamer import BlockStreamer, DeviceRegion, StreamPlan

__all__ = ["BlockStreamer", "DeviceRegion", "StreamPlan", "StreamedTransformer", "make_region",
           "stream_model"]
