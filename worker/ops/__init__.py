"""Operating medic: the `medic` command (`cli`), the command line of each process (`processes`),
`medic up` (`stack`) with its supervisor, and the process scaler's supervisor half."""
