"""A photo uploaded from a phone does not tell where the patient lives: a JPEG's Exif GPS block and its XMP
packets are gone from the stored file, the rest of its Exif (orientation) is kept, and the image itself is
not re-encoded: the compressed data from the start of scan on is byte for byte the one uploaded."""

from __future__ import annotations

import io

import piexif
from PIL import Image

from server.infra.image_metadata import header_end
from tests.helpers import Api
from tests.test_uploads import fetch, upload

GPS = {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((40, 1), (25, 1), (1234, 100)),
       piexif.GPSIFD.GPSLongitudeRef: b"W", piexif.GPSIFD.GPSLongitude: ((3, 1), (42, 1), (507, 100))}
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="40,25.2N"/>'
       b"</rdf:RDF></x:xmpmeta>")


def photo(exif: bytes, **options: object) -> bytes:
    out = io.BytesIO()
    picture = Image.linear_gradient("L").convert("RGB").resize((120, 90))
    picture.save(out, "JPEG", exif=exif, quality=90, **options)
    return out.getvalue()


def pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


async def test_the_location_is_stripped_and_the_image_data_kept(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    exif = piexif.dump({"0th": {piexif.ImageIFD.Orientation: 6, piexif.ImageIFD.Make: b"Phone"}, "GPS": GPS})
    cases = [(patient, "avatar", None, photo(exif)),
             (patient, "medication", None, photo(exif, xmp=XMP)),
             (carer, "medication", patient.id, photo(exif, xmp=XMP, progressive=True))]
    assert all(b"40,25.2N" in original for *_, original in cases[1:])
    for user, purpose, patient_id, original in cases:
        assert piexif.load(original)["GPS"]  # what the attack would read
        status, body = await upload(api, user, original, purpose, patient_id, claimed="image/jpeg")
        assert status == 201, body
        status, _, stored = await fetch(api, patient, body["id"])
        assert status == 200 and body["size"] == len(stored) < len(original)
        kept = piexif.load(stored)
        assert kept["GPS"] == {} and piexif.ImageIFD.GPSTag not in kept["0th"]
        assert b"GPSLatitude" not in stored and b"40,25.2N" not in stored  # neither Exif nor XMP keeps it
        assert kept["0th"][piexif.ImageIFD.Orientation] == 6  # the rest of Exif stays: the photo shows upright
        assert stored[header_end(stored):] == original[header_end(original):]  # not re-encoded
        assert pixels(stored) == pixels(original)


async def test_an_exif_block_that_cannot_be_read_is_dropped_whole(api: Api) -> None:
    patient = await api.register("patient")
    junk = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff GPS 40.42N 3.70W"  # an IFD count no reader can follow
    original = photo(junk)
    status, body = await upload(api, patient, original, claimed="image/jpeg")
    assert status == 201, body
    _, _, stored = await fetch(api, patient, body["id"])
    assert b"Exif\x00\x00" not in stored and b"40.42N" not in stored
    assert stored[header_end(stored):] == original[header_end(original):]
