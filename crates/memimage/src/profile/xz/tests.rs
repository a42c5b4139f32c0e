use super::container::round4;
use super::*;
use liblzma::stream::Check;

/// Several blocks (a full flush ends one), like `xz -T` writes, but
/// without sizes in the block headers; the fixture ISF has them.
pub(crate) fn multi_block(data: &[u8], block_size: usize, check: Check) -> Vec<u8> {
    let mut enc = Stream::new_easy_encoder(1, check).unwrap();
    let mut out = Vec::with_capacity(data.len() + 1024);
    for chunk in data.chunks(block_size) {
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(1 << 16);
            }
            let before = enc.total_in();
            let st = enc
                .process_vec(&chunk[at..], &mut out, Action::FullFlush)
                .unwrap();
            at += (enc.total_in() - before) as usize;
            if st == Status::StreamEnd && at == chunk.len() {
                break;
            }
        }
    }
    loop {
        out.reserve(1 << 16);
        if enc.process_vec(&[], &mut out, Action::Finish).unwrap() == Status::StreamEnd {
            return out;
        }
    }
}

fn sample(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] % 7 + b'a')
        .collect()
}

/// Collects what it is fed; refuses after `limit` bytes.
#[derive(Debug)]
struct Collect {
    text: Vec<u8>,
    limit: usize,
}

impl Sink for Collect {
    fn feed(&mut self, text: &[u8]) -> bool {
        self.text.extend_from_slice(text);
        self.text.len() <= self.limit
    }
}

#[test]
fn streamed_blocks_reach_their_sinks_in_order_and_are_checked() {
    let data = sample(3 << 20);
    let xz = multi_block(&data, 1 << 20, Check::Crc64);
    let collect = |limit| {
        move |_| Collect {
            text: Vec::new(),
            limit,
        }
    };
    let sinks = decode_into(&xz, &collect(usize::MAX)).unwrap().unwrap();
    assert_eq!(sinks.len(), 3);
    let joined: Vec<u8> = sinks.into_iter().flat_map(|s| s.text).collect();
    assert_eq!(joined, data);
    // A sink that stops, a damaged block: errors, and every thread ends.
    assert!(decode_into(&xz, &collect(100_000)).unwrap().is_err());
    let blocks = plan(&xz).unwrap();
    let mut bad = xz.clone();
    bad[round4(blocks[1].data.end).unwrap()] ^= 1;
    let err = decode_into(&bad, &collect(usize::MAX))
        .unwrap()
        .unwrap_err();
    assert!(err.contains("CRC64"), "{err}");
    // Not a container this path reads.
    let crc32 = multi_block(&data[..1000], 300, Check::Crc32);
    assert!(decode_into(&crc32, &collect(usize::MAX)).is_none());
}

#[test]
fn parallel_blocks_match_the_input() {
    let data = sample(3 << 20);
    let xz = multi_block(&data, 1 << 20, Check::Crc64);
    let blocks = plan(&xz).unwrap();
    assert_eq!(blocks.len(), 3);
    assert_eq!(*decode_blocks(&xz, &blocks).unwrap(), *data);
    assert_eq!(*decode(&xz).unwrap(), *data);
}

#[test]
fn a_flipped_bit_is_an_error_or_decodes_the_same() {
    let data = sample(300_000);
    let xz = multi_block(&data, 100_000, Check::Crc64);
    assert!(plan(&xz).is_some());
    let mut errors = 0;
    for at in (0..xz.len()).step_by(97).chain(xz.len() - 64..xz.len()) {
        let mut bad = xz.clone();
        bad[at] ^= 0x10;
        match decode(&bad) {
            Ok(out) => assert_eq!(*out, *data, "flip at {at} decoded to other data"),
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0);
}

#[test]
fn a_wrong_check_is_caught_by_the_parallel_path() {
    let data = sample(200_000);
    let mut xz = multi_block(&data, 100_000, Check::Crc64);
    let blocks = plan(&xz).unwrap();
    let check_at = round4(blocks[0].data.end).unwrap();
    xz[check_at] ^= 1;
    let blocks = plan(&xz).unwrap();
    assert!(decode_blocks(&xz, &blocks).unwrap_err().contains("CRC64"));
    assert!(decode(&xz).is_err());
}

#[test]
fn other_shapes_go_through_the_stream_decoder() {
    let data = sample(100_000);
    let mut one = Vec::new();
    std::io::Write::write_all(&mut liblzma::write::XzEncoder::new(&mut one, 6), &data).unwrap();
    assert_eq!(plan(&one).map(|b| b.len()), Some(1));
    assert_eq!(*decode(&one).unwrap(), *data);
    let crc32 = multi_block(&data, 30_000, Check::Crc32);
    assert!(plan(&crc32).is_none());
    assert_eq!(*decode(&crc32).unwrap(), *data);
    assert!(decode(&one[..one.len() - 1]).is_err());
    let mut padded = one.clone();
    padded.extend_from_slice(&[0; 4]);
    assert!(plan(&padded).is_none());
    assert_eq!(*decode(&padded).unwrap(), *data);
}
