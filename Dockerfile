# GXPO recipe on verl 0.9.1 (GPU image).
#
#   docker build -t gxpo:latest .
#   docker run --gpus all --shm-size=16g --network=host \
#       -v $HF_HOME:/root/.cache/huggingface \
#       -v $HOME/data/gxpo_math:/root/data/gxpo_math:ro \
#       -v /shared/gxpo-runs:/workspace/runs \
#       gxpo:latest \
#       python -m recipe.gxpo.main_gxpo experiment=paper_math base_model=qwen2.5-1.5b method=gxpo_k5 \
#           trainer.default_local_dir=/workspace/runs/qwen_gxpo_k5
#
# The mounts: the model cache; the parquet files of `python -m verl_ext.data.prepare_math` (paper_math
# reads $HOME/data/gxpo_math, /root/data/gxpo_math here); and the run directory on the host, so the
# checkpoints, metrics and wandb files outlive the container (rerunning the same command resumes).
#
# Base: verl's published vLLM application image. verl 0.9.1's `vllm` extra pins vllm==0.24.0,
# torch==2.11.0 (CUDA 13.0) and transformers==5.9.0; `vllm024` is verl's image line for exactly that
# vLLM/torch stack (Ubuntu 24.04, CUDA 13.0, Python 3.12, flash-attn 2.8.3). verl's images ship the
# frameworks but not verl itself, which is installed below. CUDA 13 needs an R580+ host driver.
# Tags move: check https://hub.docker.com/r/verlai/verl/tags (or verl's docker/README for the
# release) and override with --build-arg BASE_IMAGE=... when a newer vllm024 build is out.
ARG BASE_IMAGE=verlai/verl:vllm024.dev2
FROM ${BASE_IMAGE}

ARG VERL_VERSION=0.9.1
# verl 0.9.1 needs transformers >=5.5.3,<5.11 (!=5.6.0); 5.9.0 is the pin of its vllm extra.
ARG TRANSFORMERS_VERSION=5.9.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WANDB_MODE=offline \
    HF_HOME=/root/.cache/huggingface \
    TOKENIZERS_PARALLELISM=false \
    GXPO_LOG_DIR=/workspace/runs

WORKDIR /workspace/gxpo

# Keep the base image's CUDA stack: whatever is installed of these is pinned for every install below,
# so a dependency can never pull a different torch / vLLM / flash-attn build.
RUN python -m pip freeze \
        | grep -iE '^(torch|torchvision|torchaudio|vllm|flash[-_]attn|flashinfer[-_]python|triton|xformers|transformer[-_]engine|nvidia-[a-z0-9-]+)==' \
        > /opt/base-constraints.txt; \
    echo "base constraints:"; cat /opt/base-constraints.txt

# verl itself and the dependencies the base image may lack (TransferQueue and the rest of the
# verl-core extra, math-verify for the reward, peft for LoRA, plotting for launch.report).
RUN python -m pip install -c /opt/base-constraints.txt \
        "verl[verl-core]==${VERL_VERSION}" \
        "transformers==${TRANSFORMERS_VERSION}" \
        "math-verify>=0.7" \
        "peft>=0.14" \
        "hydra-core>=1.3" \
        "wandb>=0.19" \
        "matplotlib>=3.8" \
        "pandas>=2.0" \
        "ray[default]>=2.41"

# The project, installed in place without touching the dependencies resolved above.
COPY . /workspace/gxpo
RUN python -m pip install --no-deps -e /workspace/gxpo \
    && python -c "from importlib.metadata import version as v; import verl, recipe.gxpo, launch.report; \
print(*[f'{p} {v(p)}' for p in ('torch', 'vllm', 'verl', 'transformers', 'ray')], sep=' | ')"

CMD ["bash"]
