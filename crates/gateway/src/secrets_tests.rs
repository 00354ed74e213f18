use super::*;

fn secret(name: &str, value: &str, hosts: &[&str]) -> Secret {
    Secret::new(
        name,
        placeholder(name, &[7; 16]),
        Zeroizing::new(value.as_bytes().to_vec()),
        hosts.iter().map(|h| h.to_string()).collect(),
        Places {
            header: true,
            query: false,
            body: false,
        },
    )
    .unwrap()
}

#[test]
fn placeholders_are_recognizable_and_url_safe() {
    let p = placeholder("OPENAI_API_KEY", &[0xab; 16]);
    assert_eq!(
        p,
        "STOCKADE_PLACEHOLDER_OPENAI_API_KEY_abababababababababababababababab"
    );
    assert!(p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
}

#[test]
fn debug_never_shows_the_value() {
    let s = secret("K", "sk-very-secret-value", &["api.example.com"]);
    let one = format!("{s:?}");
    let shown = format!("{one} {:?}", SecretSet::new(vec![s]));
    assert!(!shown.contains("sk-very-secret-value"), "{shown}");
    assert!(shown.contains("<hidden>"));
}

#[test]
fn bad_secrets_are_refused() {
    let mk = |v: &str, p: String, hosts: Vec<String>| {
        Secret::new(
            "K",
            p,
            Zeroizing::new(v.as_bytes().to_vec()),
            hosts,
            Places::default(),
        )
    };
    let h = vec!["a.example".to_string()];
    assert!(mk("", placeholder("K", &[1; 16]), h.clone()).is_err());
    assert!(mk("v", "nope".into(), h.clone()).is_err());
    assert!(mk("v", placeholder("K", &[1; 16]), vec![]).is_err());
    let p = placeholder("K", &[1; 16]);
    assert!(mk(&format!("x{p}x"), p.clone(), h.clone()).is_err());
    assert!(mk("PLACEHOLDER", p, h).is_err());
}

#[test]
fn replacement_is_the_same_for_every_chunking() {
    let pairs = vec![
        (b"SECRET".to_vec(), b"<s>".to_vec(), 0),
        (b"SEC".to_vec(), b"<short>".to_vec(), 1),
        (b"TOKEN123".to_vec(), b"<t>".to_vec(), 2),
    ];
    let input = b"xxSECRETyySECzzTOKEN123SECRETSECRE".to_vec();
    let whole = Replacer::new(pairs.clone()).apply(&input);
    assert_eq!(whole, b"xx<s>yy<short>zz<t><s><short>RE".to_vec());
    // Every split into up to three pieces.
    for a in 0..=input.len() {
        for b in a..=input.len() {
            let mut r = Replacer::new(pairs.clone());
            let mut out = r.feed(&input[..a]);
            out.extend(r.feed(&input[a..b]));
            out.extend(r.feed(&input[b..]));
            out.extend(r.finish());
            assert_eq!(out, whole, "split at {a},{b}");
            assert_eq!(r.counts.iter().map(|c| c.1).sum::<u64>(), 5);
        }
    }
    // Byte by byte.
    let mut r = Replacer::new(pairs);
    let mut out = Vec::new();
    for b in &input {
        out.extend(r.feed(std::slice::from_ref(b)));
    }
    out.extend(r.finish());
    assert_eq!(out, whole);
}

#[test]
fn a_set_finds_scrubs_and_injects() {
    let a = secret("A", "value-of-a", &["api.a.test"]);
    let b = secret("B", "value-of-b", &["api.b.test"]);
    let (pa, pb) = (a.placeholder.clone(), b.placeholder.clone());
    let set = SecretSet::new(vec![a, b]);
    assert!(set.bound("api.a.test") && set.bound("api.b.test") && !set.bound("other.test"));
    let text = format!("auth {pa} and {pb}");
    let found: Vec<&str> = set
        .placeholders_in(text.as_bytes())
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(found, ["A", "B"]);
    assert!(
        set.placeholders_in(b"STOCKADE_PLACEHOLDER_ but no full one")
            .is_empty()
    );

    let injected = set.injector(&[0]).apply(text.as_bytes());
    assert_eq!(injected, format!("auth value-of-a and {pb}").into_bytes());
    let scrubbed = set
        .scrubber()
        .apply(b"echo: value-of-a value-of-b value-of-a");
    assert_eq!(scrubbed, format!("echo: {pa} {pb} {pa}").into_bytes());
    let mut scan = set.scanner();
    let same = scan.apply(text.as_bytes());
    assert_eq!(same, text.as_bytes());
    assert_eq!(scan.matched().collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn only_a_possible_start_of_a_pattern_is_held_back() {
    let mut r = Replacer::new(vec![(b"SECRET".to_vec(), b"<s>".to_vec(), 0)]);
    // Nothing here can start "SECRET": all of it is final at once (no lag for streams).
    assert_eq!(r.feed(b"data: hello\n\n"), b"data: hello\n\n".to_vec());
    // "SEC" may be the start: held until the next chunk decides.
    assert_eq!(r.feed(b"x SEC"), b"x ".to_vec());
    assert_eq!(r.feed(b"RET y"), b"<s> y".to_vec());
    assert_eq!(r.feed(b"SE"), Vec::<u8>::new());
    // "SEN" cannot continue to "SECRET"; the new "SE" at the end still might.
    assert_eq!(r.feed(b"NSE"), b"SEN".to_vec());
    assert_eq!(r.finish(), b"SE".to_vec());
}
