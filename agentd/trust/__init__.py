"""Trust: canonical JSON, keys, signed envelopes, the hybrid logical clock, the audit chain, untrusted input."""
