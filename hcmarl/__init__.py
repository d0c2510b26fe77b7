"""hcmarl: cooperative multi-agent RL from composable blocks (DESIGN.md)."""

__version__ = "0.1.0"
