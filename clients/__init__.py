"""The lender: a Flower ClientApp that only ever sees its own records."""
