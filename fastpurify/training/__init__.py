"""Training scripts for the embedded models: the digits DDPM and classifier (`train_digits`), the TRADES auxiliary
network for AGDM (`train_aux`, `trades`) and the sample card shipped beside the weights (`card`)."""
