"""Handing a model to the engines users already run: a Triton model repository (:mod:`tltf.deploy.triton`), a
KServe ``InferenceService`` manifest that serves it (:mod:`tltf.deploy.kserve`), and batch scoring of a folder
on Ray Data (:mod:`tltf.deploy.ray_scoring`). Nothing here imports TensorFlow."""
