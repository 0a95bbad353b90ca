"""The ablation study: its runner, paired statistics and report."""
