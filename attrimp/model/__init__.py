"""The model: the three interfaces, the attribute schema, the expert banks, MoSAIC-ReID and its
checkpoints. Nothing is imported eagerly, so ``attrimp.model.schema`` stays torch-free for
``studies/``."""
