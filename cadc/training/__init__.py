"""Two-stage CADC training (``cadc train``) and the codec-path trainer of the shipped model.

Modules: :mod:`.config` (TrainConfig, ablation presets), :mod:`.data` (image folders, crops,
held-out split), :mod:`.losses` (rate, MSE, PSNR, hinge), :mod:`.backbones` (LPIPS, CLIP,
discriminator from local files), :mod:`.generative_branch` (differentiable one-step SD-Turbo
decoder), :mod:`.objective` (the loss DDP wraps),
:mod:`.trainer` (the loop), :mod:`.state` (resume state), :mod:`.distributed` (torchrun set-up),
:mod:`.cli` (the ``train`` subcommand). Importing this package imports none of them.
"""
