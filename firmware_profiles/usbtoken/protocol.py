"""The token management protocol (ours; no vendor publishes one) and the DFU 1.1 codes: the
one definition both the agent and the emulated token use. SCHEMA.md §10.

Carried over the no-admin channel: on a vendor interface (class FF, WinUSB on Windows) as
vendor control requests to the interface (OUT ``REQ_COMMAND`` with the request frame, then IN
``REQ_RESPONSE`` for the answer); on the HID model as feature report ``MGMT_REPORT_ID``
(SET_REPORT the request, GET_REPORT the answer). A request is ``op`` (u8) + arguments
(big-endian); an answer is a status (u8) + data.

Image data rides a bulk OUT endpoint of the vendor interface (``OP_BULK_WRITE``): the control pipe
carries commands and answers only. A model without that endpoint (the HID model: a HID interface has
no bulk endpoints) writes blocks with ``OP_WRITE`` in its feature reports.

Imports nothing.
"""
REQ_COMMAND, REQ_RESPONSE = 0x01, 0x02
MGMT_REPORT_ID = 2
MAX_RESPONSE = 16 * 1024

OP_INFO = 1      # → JSON: model, serial, firmware, bootloader, map, previous, images, free_slots, free_regions, ...
OP_HASH = 2      # region u8, first block u32, count u16 (≤ 256) → count × SHA-256
OP_WRITE = 3     # slot u8, block u32, data (≤ one block); only a free slot
OP_COPY = 4      # src region u8, dst slot u8, block u32, count u16: copy blocks within the flash
OP_SWITCH = 5    # partition u8, slot u8, length u64, sha256[32], version UTF-8: verify, then the atomic switch
OP_CONFIRM = 6   # partition u8: the new image was read back; the old region is freed
OP_DIGEST = 7    # region u8, length u64 → SHA-256 of the region's first ``length`` bytes
OP_ATTEST = 8    # JSON {nonce, release, components: {name: version}} → u16 n + installed-release manifest (the
                 # token's own, cns.v1.FleetInstalledManifest) + u16 n + ECDSA P-256 signature + device certificate
                 # DER; ST_NOT_INSTALLED unless the token runs exactly those components, committed
OP_BULK_WRITE = 9  # region u8, first block u32, count u16 (≤ 256), count × SHA-256 → armed; then count blocks
                   # on the bulk OUT endpoint; then RESPONSE: status + blocks written u16
MAX_BULK_BLOCKS = 256

REGIONS = ("cdrom", "disk", "A", "B")  # region codes 0..3: the factory homes, then the reserved area's slots
PARTS = ("cdrom", "disk")              # partition codes 0..1

ST_OK, ST_BAD_REQUEST, ST_PROTECTED, ST_VERIFY, ST_TOO_LARGE, ST_NO_SLOT = 0, 1, 2, 3, 4, 5
ST_NOT_INSTALLED, ST_BLOCK_HASH = 6, 7
STATUS_TEXT = {
    ST_BAD_REQUEST: "the token did not understand the request",
    ST_PROTECTED: "the token refused to write a region in use (live or kept image)",
    ST_VERIFY: "the token's hash of the staged image does not match",
    ST_TOO_LARGE: "the image does not fit the token's slot",
    ST_NO_SLOT: "the token's reserved area has no free slot",
    ST_NOT_INSTALLED: "the token does not run (committed) the release it was asked to attest",
    ST_BLOCK_HASH: "a block reached the token with another SHA-256 than announced (damaged on the link)",
}

# DFU 1.1 (class requests to the DFU interface)
DFU_DETACH, DFU_DNLOAD, DFU_UPLOAD, DFU_GETSTATUS, DFU_CLRSTATUS, DFU_GETSTATE, DFU_ABORT = range(7)
APP_IDLE, APP_DETACH, DFU_IDLE, DFU_DNLOAD_SYNC, DFU_DNBUSY, DFU_DNLOAD_IDLE = range(6)
DFU_MANIFEST_SYNC, DFU_MANIFEST, DFU_MANIFEST_WAIT_RESET, DFU_UPLOAD_IDLE, DFU_ERROR = range(6, 11)
ERR_OK, ERR_TARGET, ERR_FILE, ERR_WRITE = 0x00, 0x01, 0x02, 0x03
ERR_VERIFY, ERR_UNKNOWN = 0x07, 0x0E
