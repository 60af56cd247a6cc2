"""What records are turned into: reports, figures, regression verdicts, parity and ablations."""
