use super::*;

#[test]
fn part_sizes_grow_to_fit_ten_thousand_parts() {
    assert_eq!(part_size_for(None, 0).unwrap(), 8 * MIB);
    assert_eq!(part_size_for(Some(1 << 30), 0).unwrap(), 8 * MIB);
    assert_eq!(max_image_for(8 * MIB), 80_000 * MIB);
    // 1 TiB needs 105 MiB parts (crates.md).
    let tib = part_size_for(Some(1 << 40), 8 * MIB).unwrap();
    assert_eq!(tib, 105 * MIB);
    assert!(tib * MAX_PARTS >= 1 << 40);
    // Any size up to S3's limit fits; beyond it is refused up front.
    for size in [80_000 * MIB + 1, 3 << 40, MAX_OBJECT_SIZE] {
        let part = part_size_for(Some(size), 0).unwrap();
        assert!(part * MAX_PARTS >= size && part <= MAX_PART_SIZE);
        assert_eq!(part % MIB, 0);
    }
    assert!(part_size_for(Some(MAX_OBJECT_SIZE + 1), 0).is_err());
    assert_eq!(part_size_for(Some(1 << 30), 64 * MIB).unwrap(), 64 * MIB);
    // A part attempt's deadline grows with the part: 1 MiB/s plus a minute.
    assert_eq!(part_attempt_timeout(8 * MIB), Duration::from_secs(68));
    assert_eq!(
        part_attempt_timeout(MAX_PART_SIZE),
        Duration::from_secs(60 + 5120)
    );
}

#[test]
fn keys_and_sse() {
    let mut spec = S3Spec {
        bucket: "b".into(),
        prefix: "cases/42".into(),
        region: None,
        endpoint_url: None,
        profile: None,
        sse: None,
        concurrency: 4,
        min_part_size: MIN_PART_SIZE,
        overwrite: false,
    };
    assert_eq!(
        spec.image_key("fe80::1%eth0", "h-1.lime"),
        "cases/42/fe80__1_eth0/h-1.lime"
    );
    spec.prefix.clear();
    assert_eq!(spec.image_key("web1", "x.lime"), "web1/x.lime");
    assert_eq!(parse_sse(None, None).unwrap(), None);
    assert_eq!(parse_sse(Some("AES256"), None).unwrap(), Some(Sse::S3));
    assert_eq!(
        parse_sse(Some("aws:kms"), Some("alias/ir")).unwrap(),
        Some(Sse::Kms(Some("alias/ir".into())))
    );
    assert!(parse_sse(Some("AES256"), Some("k")).is_err());
    assert!(parse_sse(None, Some("k")).is_err());
    assert!(parse_sse(Some("aes256"), None).is_err());
}

#[test]
fn requests_that_store_objects_carry_sse_and_if_none_match() {
    let mut spec = BucketRequest {
        name: "b".into(),
        ..Default::default()
    }
    .validate()
    .unwrap();
    assert_eq!(spec.sse_headers(), (None, None));
    assert_eq!(spec.if_none_match().as_deref(), Some("*"));
    spec.sse = Some(Sse::S3);
    assert_eq!(
        spec.sse_headers(),
        (Some(ServerSideEncryption::Aes256), None)
    );
    spec.sse = Some(Sse::Kms(Some("alias/ir".into())));
    assert_eq!(
        spec.sse_headers(),
        (
            Some(ServerSideEncryption::AwsKms),
            Some("alias/ir".to_string())
        )
    );
    spec.overwrite = true;
    assert_eq!(spec.if_none_match(), None);
}
