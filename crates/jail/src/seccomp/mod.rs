//! seccomp-bpf filter kept as data (stub, being written).
