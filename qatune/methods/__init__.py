"""Fine-tuning methods: a registry of named recipes that turn a base model into a trainable model.

Each method lives in its own module and registers itself; ``registry.get("lora")`` returns it.
Variants such as ``lora-last4`` (LoRA on the last 4 layers) are parsed by the registry.
"""

from qatune.methods.base import Method, MethodRegistry, registry  # noqa: F401, I001
# imported for registration; this order is the order methods are listed in help and errors
from qatune.methods import full, lora, ia3, prompt_learning  # noqa: F401, E402
