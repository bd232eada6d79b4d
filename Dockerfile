# The serving image for a CUDA machine and for the pods of deploy/rayservice.yaml (KubeRay).
#   docker build -t ghcr.io/example/hunyuan-ocr-serve:0.1.0 .
# vLLM's official image for the vLLM pin of pyproject.toml's gpu extra (vllm==0.32.0, built for CUDA 13.0):
# its CUDA, torch and vLLM are the ones the extra asks for, so the install below only adds this project,
# Ray Serve and the other dependencies. Bump the tag together with the pin.
FROM vllm/vllm-openai:v0.32.0

WORKDIR /app
COPY pyproject.toml README.md serve_config.yaml ./
COPY configs ./configs
COPY serve_app ./serve_app
# The README's CUDA install ("Installing by hand"), without the test tools of the dev extra.
ENV PIP_NO_CACHE_DIR=1
RUN pip install -e '.[gpu]'

# Model weights are downloaded on first start into HF_HOME; mount a volume there to keep them.
ENV HF_HOME=/models/huggingface
# The base image starts vLLM's own server; this image runs Ray (KubeRay sets the pods' command) or Serve.
ENTRYPOINT []
CMD ["serve", "run", "serve_config.yaml"]
