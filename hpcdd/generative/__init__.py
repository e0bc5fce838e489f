"""The generative stack: DiM's conditional GAN and the methods built on it, in one place.

* :mod:`~hpcdd.generative.nets`: the generator and critic (DiM's ``gan_model.py``);
* :mod:`~hpcdd.generative.losses`: WGAN-GP + ACGAN losses, DiM's logit and Li et al.'s feature terms;
* :mod:`~hpcdd.generative.gan`: building the pair, one GAN step (both stages), its state, bf16;
* :mod:`~hpcdd.generative.pretrain`: stage 1, the ``gan_pretrain`` prerequisite;
* :mod:`~hpcdd.generative.pool`: stage 2's pool model and its augmentation;
* :mod:`~hpcdd.generative.matching`: stage 2, the ``dim`` / ``global_local`` distiller;
* :mod:`~hpcdd.generative.cgan`: ``cgan``, the stage-1 generator without matching;
* :mod:`~hpcdd.generative.source`: a generator artefact (``generator.pt``) as an evaluation source.

What these methods *are* (parameters, prerequisite, defaults) is declared torch-free in
:mod:`hpcdd.specs.generative`. Image methods never import this package; evaluation reaches it only
through :data:`hpcdd.artefact.SOURCE_KINDS` when it reads a generator artefact.
"""
