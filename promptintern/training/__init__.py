"""Training stage: progressive LoRA fine-tuning through the stages (:mod:`.trainer`) on encoded, answer-only-loss
examples (:mod:`.collate`)."""
