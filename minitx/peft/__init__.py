"""Parameter-efficient fine-tuning by hand: LoRA (with a hand-written backward), bottleneck adapters, BitFit.

    targets.py   name patterns ("q_proj", "re:<regex>", re.Pattern), freezing, trainable-parameter counts
    lora.py      LoRAFunction, LoRALinear, apply_lora, merge_lora, lora_state_dict, load_lora_state_dict
    adapters.py  AdapterLinear, apply_adapters
    bitfit.py    apply_bitfit

Math: docs/math/lora.md. Hugging Face PEFT adapter directories: `minitx.interop.peft_dirs`.
"""
