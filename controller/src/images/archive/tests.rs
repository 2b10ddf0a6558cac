use std::io::Write;

use super::*;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A tar of `entries` (name, bytes) written by hand-made headers, so hostile names pass.
fn tar_of(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    {
        let mut b = tar::Builder::new(f.as_file_mut());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
    }
    f.flush().unwrap();
    f
}

/// A one-file layer tar.
fn layer(content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", content).unwrap();
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

fn read_file(f: &tempfile::NamedTempFile) -> Result<Image, ArchiveError> {
    read(&mut f.reopen().unwrap(), "", &Limits::default())
}

/// A docker save archive with two layers (the second one compressed).
fn docker_save_parts() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let l1 = layer(b"one");
    let l2 = gzip(&layer(b"two"));
    let cfg = config(&[sha(&l1), sha(&layer(b"two"))]);
    (l1, l2, cfg)
}

#[test]
fn a_docker_save_archive_reads_with_its_digests() {
    let (l1, l2, cfg) = docker_save_parts();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", &sha(&cfg)[7..]),
        "RepoTags": ["app:1"],
        "Layers": ["a/layer.tar", "b/layer.tar"]
    }]))
    .unwrap();
    let cname = format!("{}.json", &sha(&cfg)[7..]);
    let f = tar_of(&[
        ("manifest.json", &manifest),
        (&cname, &cfg),
        ("a/layer.tar", &l1),
        ("./b/layer.tar", &l2),
    ]);
    let img = read_file(&f).unwrap();
    assert_eq!(img.reference, "app:1");
    assert_eq!(img.config.digest, sha(&cfg));
    assert_eq!(img.config.size, cfg.len() as u64);
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[0].blob.digest, sha(&l1));
    assert_eq!(img.layers[0].diff_id, sha(&l1));
    assert_eq!(img.layers[1].blob.digest, sha(&l2));
    assert_eq!(img.layers[1].diff_id, sha(&layer(b"two")));
    // The offsets point at the bytes.
    let all = std::fs::read(f.path()).unwrap();
    let b = &img.layers[1].blob;
    assert_eq!(
        &all[b.offset as usize..(b.offset + b.size) as usize],
        &l2[..]
    );
}

#[test]
fn an_oci_layout_reads_with_its_ref_name() {
    let l1 = gzip(&layer(b"one"));
    let cfg = config(&[sha(&layer(b"one"))]);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&cfg), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&l1), "size": l1.len()}]
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": "docker.io/library/app:2", "org.opencontainers.image.ref.name": "2"}}]
    }))
    .unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha(b)[7..]);
    let (bm, bc, bl) = (blob(&manifest), blob(&cfg), blob(&l1));
    let f = tar_of(&[
        ("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}"),
        ("index.json", &index),
        (&bm, &manifest),
        (&bc, &cfg),
        (&bl, &l1),
    ]);
    let img = read_file(&f).unwrap();
    assert_eq!(img.reference, "docker.io/library/app:2");
    assert_eq!(img.config.digest, sha(&cfg));
    assert_eq!(img.layers[0].blob.digest, sha(&l1));
}

#[test]
fn hostile_archives_are_refused_naming_what_is_wrong() {
    let (l1, _, cfg) = docker_save_parts();
    let cfg1 = config(&[sha(&l1)]);
    let cname = format!("{}.json", &sha(&cfg1)[7..]);
    let manifest = |layers: &[&str]| {
        serde_json::to_vec(&serde_json::json!([{
            "Config": cname, "RepoTags": ["app:1"], "Layers": layers
        }]))
        .unwrap()
    };
    // A path leaving the archive.
    let f = tar_of(&[
        ("../evil", b"x"),
        ("manifest.json", &manifest(&["a/layer.tar"])),
    ]);
    let e = read_file(&f).unwrap_err().to_string();
    assert!(e.contains("\"../evil\" leaves the archive"), "{e}");
    // A manifest naming a layer outside.
    let f = tar_of(&[
        ("manifest.json", &manifest(&["../../etc/passwd"])),
        (&cname, &cfg1),
    ]);
    let e = read_file(&f).unwrap_err().to_string();
    assert!(e.contains("leaves the archive"), "{e}");
    // A layer whose content is not the config's diff_id.
    let f = tar_of(&[
        ("manifest.json", &manifest(&["a/layer.tar"])),
        (&cname, &cfg1),
        ("a/layer.tar", &layer(b"tampered")),
    ]);
    let e = read_file(&f).unwrap_err().to_string();
    assert!(
        e.contains("layer a/layer.tar (uncompressed): digest is") && e.contains(&sha(&l1)),
        "{e}"
    );
    // A huge manifest.
    let huge = vec![b' '; 2 * 1024 * 1024];
    let f = tar_of(&[("manifest.json", &huge)]);
    let e = read_file(&f).unwrap_err().to_string();
    assert!(
        e.contains("manifest.json is 2097152 bytes, more than the 1048576"),
        "{e}"
    );
    // A missing layer, two images, no tag, not an image at all, not a tar.
    let f = tar_of(&[
        ("manifest.json", &manifest(&["a/layer.tar"])),
        (&cname, &cfg1),
    ]);
    assert_eq!(
        read_file(&f).unwrap_err().to_string(),
        "a/layer.tar is missing from the archive"
    );
    let two = serde_json::to_vec(
        &serde_json::json!([{"Config": cname, "Layers": []}, {"Config": cname, "Layers": []}]),
    )
    .unwrap();
    let f = tar_of(&[("manifest.json", &two)]);
    assert!(
        read_file(&f)
            .unwrap_err()
            .to_string()
            .contains("holds 2 images")
    );
    let untagged =
        serde_json::to_vec(&serde_json::json!([{"Config": cname, "Layers": ["a/layer.tar"]}]))
            .unwrap();
    let f = tar_of(&[
        ("manifest.json", &untagged),
        (&cname, &cfg1),
        ("a/layer.tar", &l1),
    ]);
    assert!(read_file(&f).unwrap_err().to_string().contains("--tag"));
    let f = tar_of(&[("hello.txt", b"hi")]);
    assert!(matches!(read_file(&f), Err(ArchiveError::Unknown)));
    let mut junk = tempfile::NamedTempFile::new().unwrap();
    junk.write_all(&[7u8; 700]).unwrap();
    assert!(read_file(&junk).is_err());
    let _ = cfg;
}

#[test]
fn entry_names_are_cleaned_and_links_stay_inside() {
    assert_eq!(clean("./a//b/./c").unwrap(), "a/b/c");
    assert!(clean("/etc/passwd").is_err());
    assert!(clean("a/../../b").is_err());
    assert!(valid_digest(&sha(b"x")));
    assert!(!valid_digest("sha256:ABC"));
    assert!(check_reference("registry:5000/app:1.0").is_ok());
    assert!(check_reference("app\n:1").is_err());
}
