"""The continual-learning half: prompted ViTs, the methods, the data and the task loop."""

from norga.extras import require_extra

require_extra("cl", "cl", ("torch", "torchvision", "timm", "safetensors", "huggingface_hub",
                           "PIL", "scipy", "sklearn", "tqdm", "yaml"))
