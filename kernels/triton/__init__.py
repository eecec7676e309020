"""The Triton implementations behind kernels/ops.py's dispatch; nothing here decides between Triton and the reference.

Each op module holds its @triton.jit kernels and a host wrapper that allocates the outputs, computes the grid and
launches (arguments are checked once, before the dispatch, by kernels/checks.py), plus `unsupported(...)`: why the
kernel cannot take a call (a dtype, head dim or size it does not cover), which the dispatch asks before it picks
Triton. Modules import triton at the top, so the dispatch imports them only once it has chosen Triton.

`import triton` in these modules is absolute and always reaches the library, never this package.
"""
