"""Training loops: BYOL pretraining (checkpointed, resumable) and land-cover fine-tuning.

Both loops run on whatever device they find (CUDA when present, else CPU) and are seeded end to
end: the same seed on the same machine gives the same weights and metrics. Under `torchrun` they
train data-parallel (DistributedDataParallel; SyncBatchNorm on GPUs; the EMA target updated
once per optimizer step on every process; fine-tuning's evaluation split in shards among the
processes; the BYOL collapse guards and all writing on rank 0 only). On CUDA, forward
passes run in bf16 autocast with channels_last tensors.

Poster scale (ResNet-50, 200 px, ~375K training sites), one node with 8 GPUs:
    torchrun --standalone --nproc_per_node=8 -m rapid_utils.cli pretrain --profile poster
(and `finetune --profile poster`; see the README, "Scaling up").
Fine-tuning writes one results file per run; pretraining one checkpoint that `models.build_model`
reads with ``init="byol:<path>"``.

The package: `pretraining` (BYOL), `finetuning` (classification) and `runtime` (what both
share: seeds, loaders, devices and DDP, unreadable samples). The names below are its API.
"""

from rapid_utils.train.finetuning import (
    EVAL_DATES,
    FINETUNE_VIEW,
    FinetuneConfig,
    check_checkpoint_provenance,
    finetune,
    finetune_provenance,
    results_name,
    stale_reasons,
)
from rapid_utils.train.pretraining import (
    CHECKPOINT_FILE,
    PretrainConfig,
    encoder_features,
    pretrain,
    pretrain_provenance,
    previous_checkpoint,
)
from rapid_utils.train.runtime import (
    UNREADABLE_SHARE,
    UnreadableLog,
    make_loader,
    seed_everything,
)

__all__ = [
    "CHECKPOINT_FILE", "EVAL_DATES", "FINETUNE_VIEW", "UNREADABLE_SHARE", "FinetuneConfig",
    "PretrainConfig", "UnreadableLog", "check_checkpoint_provenance", "encoder_features",
    "finetune", "finetune_provenance", "make_loader", "pretrain", "pretrain_provenance",
    "previous_checkpoint", "results_name", "seed_everything", "stale_reasons",
]
