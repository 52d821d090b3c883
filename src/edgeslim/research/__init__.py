"""Research code beside the optimizer pipeline: training (QAT, mixed precision, binary networks, BERT-of-Theseus,
Reformer), numba kernels (bit-packed binary GEMM/conv), SLIDE (LSH-sparse training on CPU) and CARS architecture
search.

It may use the pipeline below it (tasks, engines, bench) but the pipeline never imports it: `import edgeslim` and
`edgeslim optimize` need neither torch nor numba. See ARCHITECTURE.md.
"""
