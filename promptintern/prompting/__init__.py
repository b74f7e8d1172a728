"""Prompt stage: a prompt's parts and rendering (:mod:`.prompt`), token counting (:mod:`.tokens`) and BLEU
example retrieval (:mod:`.retrieve`, the paper's Eq. 3)."""
