"""Scale-out: Kubeflow Pipelines (KFP v2) and Kubeflow Training Operator (PyTorchJob) for qatune.

* :mod:`qatune.pipelines.steps`: what each pipeline step does (no kfp needed);
* :mod:`qatune.pipelines.kfp_pipeline`: the KFP pipeline, compile and ``kfp.local`` run (needs ``kfp``);
* :mod:`qatune.pipelines.pytorchjob`: a ``kubeflow.org/v1`` PyTorchJob manifest for one training run.
"""
