"""Training: stage-1 LoRA experts (GRPO / SFT / SFT warm-up then GRPO)."""

from loramix.train.common import greedy_accuracy, greedy_completions
from loramix.train.experts import ExpertTrainConfig, is_complete, partial_dir, train_expert

__all__ = ["ExpertTrainConfig", "greedy_accuracy", "greedy_completions", "is_complete", "partial_dir",
           "train_expert"]
