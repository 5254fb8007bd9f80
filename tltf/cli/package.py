"""``tltf package MODEL.onnx --triton DIR [--name NAME] [--kserve] [--storage-uri URI]``: a Triton model repository
and a KServe InferenceService manifest serving it."""

import click


@click.command("package")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--triton", "folder", required=True, type=click.Path(file_okay=False),
              help="The model repository to write (DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx, labels).")
@click.option("--name", default=None, help="The model's name in the repository [default: MODEL's file stem].")
@click.option("--bench-json", type=click.Path(dir_okay=False),
              help="A `tltf bench --json` file to choose the batch sizes from [default: a short bench here].")
@click.option("--batch-sizes", default="1,8,32", show_default=True,
              help="Batch sizes of the short bench; the largest is max_batch_size.")
@click.option("--kserve", is_flag=True,
              help="Also write NAME.inferenceservice.yaml beside DIR (KServe, Triton runtime).")
@click.option("--storage-uri", default=None,
              help="Where the cluster reads DIR from (gs://, s3://, pvc://...) "
                   "[default: gs://BUCKET/models, to edit].")
@click.option("--namespace", default=None, help="The InferenceService's Kubernetes namespace.")
def command(model, folder, name, bench_json, batch_sizes, kserve, storage_uri, namespace):
    """Write a Triton model repository for MODEL (.onnx), served as is by Triton (`tritonserver
    --model-repository DIR`) and by `tltf serve --model-repository DIR`; with --kserve, a KServe
    InferenceService that serves it on a cluster.

    Batch sizes come from tltf bench: the preferred ones are those within 90% of the best images/s.
    """
    from pathlib import Path

    from tltf.bench.runner import parse_batch_sizes
    from tltf.deploy.triton import read_bench, write_repository

    rows = read_bench(bench_json) if bench_json else None
    home = write_repository(model, folder, name=name, bench_results=rows,
                            bench_sizes=parse_batch_sizes(batch_sizes))
    from tltf.deploy.pbtxt import loads
    from tltf.deploy.triton import triton_model_config

    config = loads((home / "config.pbtxt").read_text())
    batching = config.get("dynamic_batching", {})
    checked = ", checked with Triton's ModelConfig protobuf" if triton_model_config() else ""
    click.echo(f"{home}: config.pbtxt (max_batch_size {config['max_batch_size']}, preferred batch sizes "
               f"{batching.get('preferred_batch_size', [])}{checked}), 1/model.onnx")
    if kserve:
        from tltf.deploy.kserve import inference_service, write_manifest

        path = Path(folder).resolve().parent / f"{home.name}.inferenceservice.yaml"  # outside the repository
        write_manifest(path, inference_service(home.name, storage_uri or "gs://BUCKET/models", namespace))
        click.echo(f"{path}: KServe InferenceService (kubectl apply -f {path}; copy {folder} to the storage URI "
                   "first)")
