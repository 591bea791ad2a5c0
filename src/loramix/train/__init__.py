"""Training commands, each a config/function pair on the HF or TRL trainers, all through
``train.common.RunFolder`` (one resume policy):

- ``experts``: stage-1 LoRA experts (GRPO / SFT / SFT warm-up then GRPO)
- ``distill``: traces of the experts' correct answers
- ``router``: stage-2 router (+ attention LoRA) over frozen experts
- ``remix``: ReMix and the MixLoRA-style top-k baseline
- ``multitask``, ``prompt_router``, ``xlora``: the baselines that train
"""

from loramix.train.common import greedy_accuracy, greedy_completions, partial_dir
from loramix.train.experts import ExpertTrainConfig, is_complete, train_expert

__all__ = ["ExpertTrainConfig", "greedy_accuracy", "greedy_completions", "is_complete", "partial_dir",
           "train_expert"]
