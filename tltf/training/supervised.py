"""The engine's default trainer: the classifier (or a plug-in's wrapper of it) fitted on labelled images with
the stage plan, one ``model.fit`` whose callbacks move through the stages."""

from __future__ import annotations

import warnings

from tltf.data import make_pipeline
from tltf.models.head import loss_and_metrics
from tltf.staging import make_optimizer, prepare
from tltf.staging.batchnorm import PreciseBatchNorm
from tltf.training.loss_terms import with_loss_terms
from tltf.training.methods import Method
from tltf.training.runtime import use_jit


class Supervised(Method):
    """Labelled images through the whole network, stage by stage."""

    name = "supervised"
    trains = True

    def fit(self, run, callbacks: list) -> None:
        config, dist, plan = run.config, run.dist, run.plan
        train_model = with_loss_terms(run.train_model, run.loss_terms)
        jit = use_jit(config.jit)
        with dist.scope():
            train_model.compile(optimizer=make_optimizer(config.optimizer, plan.stages[0].learning_rate,
                                                         config.clipnorm),
                                **(run.objective or loss_and_metrics(len(run.data.class_names) == 2)),
                                jit_compile=jit)
            prepare(train_model, plan, run.transfer.frozen)
        train = make_pipeline(run.data.train, run.size, dist.global_batch, training=True, augment=run.augment,
                              seed=config.seed, cache=config.cache)
        val = (make_pipeline(run.data.val, run.size, dist.global_batch, cache=config.cache)
               if run.data.val is not None else None)
        run.folder.write_config(config, plan, run.size, train_bn_effective=run.train_bn, jit_effective=jit,
                                replicas=dist.replicas, global_batch_size=dist.global_batch,
                                feature_cache_effective=False, augment_effective=run.augment_text,
                                defaults=run.defaults)
        own = run.standard_callbacks(len(run.data.train), keep_frozen=run.transfer.frozen)
        if run.train_bn:  # evaluate and save with BatchNorm statistics of the final weights (tltf.staging.batchnorm)
            own.append(PreciseBatchNorm(run.model, train))
        warnings.filterwarnings("ignore", message="Your input ran out of data")  # unknown cardinality
        train_model.fit(train, validation_data=val, epochs=plan.epochs, callbacks=[*own, *callbacks],
                        verbose=run.verbose, shuffle=False)
