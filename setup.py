from setuptools import setup

setup(
    name="minirlhf",
    version="0.1.0",
    description=("A minimal, from-scratch InstructGPT / ChatGPT recipe (SFT, reward model, PPO) on a single-file GPT "
                 "with Triton kernels"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["minirlhf", "kernels"],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3",
        "triton>=3.0; platform_system == 'Linux'",  # the kernels; the CPU paths run without it
        "numpy",
        "tiktoken>=0.11",  # 0.11: single-byte token ids read from vocab.json
        "safetensors",  # GPT-2 weights in Hugging Face's format: read (--init_from) and written (export)
    ],
    extras_require={
        # ruff: the linter .ci/run runs; matplotlib (the plot extra): the tests check the PNGs the report and
        # the experiments draw; pytest-xdist: the tests run in one process per core (pytest.ini). pytest 9.2
        # renamed the node ids that pytest-xdist 3.8's --dist loadgroup rewrites, so its groups fall apart there
        # (and a module's costly fixture is built in every process); tests/conftest.py stops a run where they do
        "dev": ["pytest<9.2", "hypothesis", "pytest-xdist", "ruff", "matplotlib"],
        "plot": ["matplotlib"],  # the training-curve PNG of a PPO run, the experiments' figures
    },
)
