"""One module per command; each defines `command`, registered in ckpt_tool.cli."""
