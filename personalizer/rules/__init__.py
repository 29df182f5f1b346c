"""Pure rules of the personalizer: request validation, certificate lifecycle, registrations.

No I/O, no clock of their own, no grpc, proto or store: the broker and the servicers call them.
"""
