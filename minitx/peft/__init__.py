"""Parameter-efficient fine-tuning by hand: LoRA (with a hand-written backward), bottleneck adapters, BitFit.

    lora.py      LoRAFunction, LoRALinear, apply_lora, merge_lora, lora_state_dict, load_lora_state_dict
    adapters.py  AdapterLinear, apply_adapters, apply_bitfit, trainable_parameters_report, parameter_table
    targets.py   name patterns ("q_proj", "re:<regex>", re.Pattern) and freezing

Math: docs/math/lora.md.
"""

from minitx.peft.adapters import (AdapterLinear, apply_adapters, apply_bitfit, parameter_table,
                                  trainable_parameters_report)
from minitx.peft.lora import (LoRAFunction, LoRALinear, apply_lora, load_lora_state_dict, lora_state_dict,
                              merge_lora)

__all__ = ["LoRAFunction", "LoRALinear", "apply_lora", "merge_lora", "lora_state_dict", "load_lora_state_dict",
           "AdapterLinear", "apply_adapters", "apply_bitfit", "trainable_parameters_report", "parameter_table"]
