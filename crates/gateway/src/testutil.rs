//! Test helpers: a small deterministic generator for the no-panic loops (no extra dependency,
//! same inputs on every run so a failure reproduces).

/// A 64-bit linear congruential generator (Knuth's MMIX constants).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.next_u32() as usize % n.max(1)
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u32() as u8
    }

    /// Random bytes of a random length below `max_len`, drawn from `alphabet` when it is not
    /// empty (to reach deeper into text parsers), else from all 256 values.
    pub fn bytes(&mut self, max_len: usize, alphabet: &[u8]) -> Vec<u8> {
        let len = self.below(max_len);
        (0..len)
            .map(|_| {
                if alphabet.is_empty() {
                    self.byte()
                } else {
                    alphabet[self.below(alphabet.len())]
                }
            })
            .collect()
    }
}

/// Calls `f` on every prefix of `valid`, then on `rounds` copies with 1–4 random byte flips.
pub fn mutate_each(valid: &[u8], rounds: usize, seed: u64, mut f: impl FnMut(&[u8])) {
    for end in 0..=valid.len() {
        f(&valid[..end]);
    }
    let mut rng = Lcg(seed);
    for _ in 0..rounds {
        let mut m = valid.to_vec();
        for _ in 0..=rng.below(4) {
            let i = rng.below(m.len());
            m[i] = rng.byte();
        }
        f(&m);
        let cut = rng.below(m.len() + 1);
        f(&m[..cut]);
    }
}
