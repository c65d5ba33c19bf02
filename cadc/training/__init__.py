"""Two-stage CADC training (``cadc train``) and the codec-path trainer of the shipped models.

Modules: :mod:`.config` (TrainConfig, ablation presets, stage defaults), :mod:`.data` (image
folders, crops, held-out split), :mod:`.losses` (rate, MSE, PSNR, hinge), :mod:`.backbones`
(LPIPS, CLIP, discriminator from local files), :mod:`.precision` (dtypes and autocast),
:mod:`.generative_branch` (differentiable one-step SD-Turbo decoder), :mod:`.objective` (the loss
DDP wraps), :mod:`.trainer` (the loop), :mod:`.ema` (EMA of the trained weights),
:mod:`.validation` (held-out scoring spread over ranks), :mod:`.checkpoints` (step checkpoints,
last, best), :mod:`.records` (metrics.jsonl, TensorBoard), :mod:`.state` (resume state),
:mod:`.distributed` (torchrun set-up), :mod:`.cli` (the ``train`` subcommand). Importing this
package imports none of them.
"""
