import { reasonOf } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { Array as Arr, ConfigError, Data, Effect, Either, Queue, Stream } from "effect"
import { FlattenedEncrypt, GeneralEncrypt } from "jose"
import { createPublicKey, randomBytes } from "node:crypto"
import type { KeyObject } from "node:crypto"
import { orderedWorker } from "./OrderedWorker.ts"

/**
 * Layer encryption as ocicrypt (containers/ocicrypt, used by CRI-O, skopeo, podman) does it: the layer is encrypted
 * with AES-256-CTR under a fresh key and nonce, authenticated by an HMAC-SHA256 of the ciphertext, and the key is
 * given to the recipients in a JWE (RSA-OAEP or ECDH-ES+A256KW, content A256GCM) carried in a layer annotation.
 */
export const cipherType = "AES_256_CTR_HMAC_SHA256"
export const keysAnnotation = "org.opencontainers.image.enc.keys.jwe"
export const publicOptionsAnnotation = "org.opencontainers.image.enc.pubopts"
export const contentEncryption = "A256GCM"
export const keysVariable = "CHECKPOINT_ENCRYPTION_KEYS"

export const encryptedMediaType = (mediaType: string): string => `${mediaType}+encrypted`

export class LayerEncryptionError extends Data.TaggedError("LayerEncryptionError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export type KeyAlgorithm = "RSA-OAEP" | "ECDH-ES+A256KW"

/** A recipient's public key, from one file of CHECKPOINT_ENCRYPTION_KEYS. */
export interface Recipient {
  readonly file: string
  readonly key: KeyObject
  readonly algorithm: KeyAlgorithm
}

/** OpenSSL's names of P-256 and P-384. */
const curves: ReadonlySet<string> = new Set(["prime256v1", "secp384r1"])
const minimumRsaBits = 2048

/** The reason a PEM text is not a usable recipient key, or the recipient. */
export const parseRecipient = (file: string, pem: string): Either.Either<Recipient, string> => {
  if (!pem.includes("-----BEGIN PUBLIC KEY-----")) {
    return Either.left(
      pem.includes("PRIVATE KEY-----")
        ? "holds a private key; give the recipient's public key (openssl pkey -in KEY -pubout)"
        : "is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
    )
  }
  return Either.try({
    try: () => createPublicKey({ key: pem, format: "pem" }),
    catch: (cause) => `is not a readable public key (${reasonOf(cause)})`
  }).pipe(Either.flatMap((key): Either.Either<Recipient, string> => {
    const details = key.asymmetricKeyDetails ?? {}
    if (key.asymmetricKeyType === "rsa") {
      const bits = details.modulusLength ?? 0
      return bits < minimumRsaBits
        ? Either.left(`is a ${bits}-bit RSA key; at least ${minimumRsaBits} bits are needed`)
        : Either.right({ file, key, algorithm: "RSA-OAEP" })
    }
    if (key.asymmetricKeyType === "ec") {
      const curve = details.namedCurve ?? "unknown"
      return !curves.has(curve)
        ? Either.left(`is an EC key on curve ${curve}; supported are P-256 and P-384`)
        : Either.right({ file, key, algorithm: "ECDH-ES+A256KW" })
    }
    return Either.left(`is a ${key.asymmetricKeyType ?? "unknown"} key; supported are RSA and EC (P-256, P-384)`)
  }))
}

/** Reads every recipient's key file; all unreadable or unsupported files are reported at once, by name. */
export const loadRecipients = Effect.fn("LayerEncryption.loadRecipients")(function*(files: ReadonlyArray<string>) {
  const fs = yield* FileSystem.FileSystem
  const load = (file: string) =>
    fs.readFileString(file).pipe(
      Effect.mapError((error) => ConfigError.InvalidData([keysVariable], `cannot read ${file} (${reasonOf(error)})`)),
      Effect.flatMap((pem) =>
        Either.match(parseRecipient(file, pem), {
          onLeft: (reason) => Effect.fail(ConfigError.InvalidData([keysVariable], `${file} ${reason}`)),
          onRight: Effect.succeed
        })
      )
    )
  return yield* Effect.validateAll(files, load).pipe(
    Effect.mapError((errors) => Arr.reduce(errors.slice(1), errors[0]!, (all, error) => ConfigError.And(all, error)))
  )
})

/** What a recipient needs to decrypt one layer (ocicrypt's private and public LayerBlockCipherOptions). */
export interface Envelope {
  readonly symmetricKey: Uint8Array
  readonly nonce: Uint8Array
  /** HMAC-SHA256 (keyed with the symmetric key) of the ciphertext. */
  readonly hmac: Uint8Array
  /** Digest of the layer before encryption (ocicrypt checks the decrypted bytes against it). */
  readonly digest: string
}

const base64 = (bytes: Uint8Array | string): string => Buffer.from(bytes).toString("base64")

/** PrivateLayerBlockCipherOptions as ocicrypt marshals it (Go encodes byte slices as standard base64). */
export const privateOptions = (envelope: Envelope): string =>
  JSON.stringify({
    symkey: base64(envelope.symmetricKey),
    digest: envelope.digest,
    cipheroptions: { nonce: base64(envelope.nonce) }
  })

/** PublicLayerBlockCipherOptions as ocicrypt marshals it. */
export const publicOptions = (envelope: Envelope): string =>
  JSON.stringify({ cipher: cipherType, hmac: base64(envelope.hmac), cipheroptions: {} })

/**
 * Encryption, HMAC and digest run in a worker thread, in place, in slots of a shared ring of buffers. The cipher's
 * output is copied into the slot and its memory released at once (`transfer(0)`) rather than left to the garbage
 * collector, which would let about 64 MiB of dead buffers pile up before it runs.
 */
const workerSource = `
const { parentPort, workerData } = require("node:worker_threads")
const { createCipheriv, createHash, createHmac } = require("node:crypto")
const { key, nonce, ring } = workerData
const cipher = createCipheriv("aes-256-ctr", key, nonce)
const hmac = createHmac("sha256", key)
const hash = createHash("sha256")
parentPort.on("message", (message) => {
  if (message === "seal") {
    cipher.final()
    parentPort.postMessage({ hmac: hmac.digest(), ciphertextDigest: "sha256:" + hash.digest("hex") })
    return
  }
  const slot = new Uint8Array(ring, message.offset, message.length)
  const encrypted = cipher.update(slot)
  slot.set(encrypted)
  if (encrypted.byteLength === encrypted.buffer.byteLength) encrypted.buffer.transfer(0)
  hmac.update(slot)
  hash.update(slot)
  parentPort.postMessage(message)
})
`

export const cipherSlotSize = 1024 * 1024
const cipherSlots = 8
/** A ciphertext chunk's slot is reused only after this many later chunks went downstream (see readArchive). */
const heldDownstream = 4

interface Submitted {
  readonly slot: number
  readonly view: Uint8Array
}

/** What encrypting a whole layer leaves: the secrets for the recipients, the HMAC, the ciphertext's digest. */
export interface SealedLayer extends Omit<Envelope, "digest"> {
  readonly ciphertextDigest: string
}

/**
 * A fresh AES-256-CTR cipher (16-byte nonce as the initial counter block, as Go's cipher.NewCTR) that authenticates
 * what it writes (encrypt-then-MAC) and computes the ciphertext's sha256. The work runs in a worker thread, in place
 * in the slots of a shared ring: the upload's thread keeps its time for TLS and the archive's own hashing, and no
 * buffer is allocated per chunk. The bytes are encrypted in order in pieces of `cipherSlotSize`, a few ahead of the
 * consumer; a slot is refilled only when the consumer has taken `heldDownstream` later pieces.
 */
export const makeLayerCipher = Effect.gen(function*() {
  const symmetricKey = randomBytes(32)
  const nonce = randomBytes(16)
  const ring = new SharedArrayBuffer(cipherSlotSize * cipherSlots)
  const { ask } = yield* orderedWorker(
    workerSource,
    { key: symmetricKey, nonce, ring },
    (cause) => new LayerEncryptionError({ message: `the encryption worker failed: ${String(cause)}`, cause })
  )
  const free = yield* Queue.bounded<number>(cipherSlots)
  yield* Queue.offerAll(free, Array.from({ length: cipherSlots }, (_, slot) => slot))

  /**
   * Packs the chunks into whole slots (only the last may be partial) and starts each slot's encryption as soon as it
   * is full; the inner effects wait for the ciphertexts. Every piece handed out is then larger than the upload's
   * high-water mark, whatever sizes come in (a compressed frame ends in a few bytes), which is what lets a slot be
   * refilled after `heldDownstream` later pieces.
   */
  const packIntoSlots = <E, R>(bytes: Stream.Stream<Uint8Array, E, R>) => {
    let current: { readonly slot: number; filled: number } | undefined
    const send = Effect.suspend(() => {
      const { filled, slot } = current!
      current = undefined
      const view = new Uint8Array(ring, slot * cipherSlotSize, filled)
      return Effect.map(
        ask({ offset: view.byteOffset, length: view.length }),
        (encrypted) => Effect.as(encrypted, { slot, view })
      )
    })
    const fill = (chunk: Uint8Array) =>
      Effect.gen(function*() {
        const sent: Array<Effect.Effect<Submitted, LayerEncryptionError>> = []
        for (let offset = 0; offset < chunk.length;) {
          current ??= { slot: yield* Queue.take(free), filled: 0 }
          const copied = Math.min(chunk.length - offset, cipherSlotSize - current.filled)
          new Uint8Array(ring, current.slot * cipherSlotSize + current.filled, copied)
            .set(chunk.subarray(offset, offset + copied))
          offset += copied
          current.filled += copied
          if (current.filled === cipherSlotSize) sent.push(yield* send)
        }
        return sent
      })
    const last = Effect.suspend(() => current === undefined ? Effect.succeed([]) : Effect.map(send, (s) => [s]))
    return Stream.flattenIterables(Stream.concat(Stream.mapEffect(bytes, fill), Stream.fromEffect(last)))
  }
  const handedOut: Array<number> = []
  /** The ciphertext of a submitted chunk; frees the slot of the chunk handed out `heldDownstream` chunks before. */
  const complete = (submitted: Effect.Effect<Submitted, LayerEncryptionError>) =>
    Effect.gen(function*() {
      const { slot, view } = yield* submitted
      handedOut.push(slot)
      if (handedOut.length > heldDownstream) yield* Queue.offer(free, handedOut.shift()!)
      return view
    })
  const encrypt = <E, R>(
    bytes: Stream.Stream<Uint8Array, E, R>
  ): Stream.Stream<Uint8Array, E | LayerEncryptionError, R> =>
    bytes.pipe(
      packIntoSlots,
      Stream.buffer({ capacity: cipherSlots - heldDownstream - 1 }),
      Stream.mapEffect(complete)
    )
  const seal = Effect.map(Effect.flatten(ask("seal")), (reply): SealedLayer => {
    const { ciphertextDigest, hmac } = reply as Pick<SealedLayer, "ciphertextDigest" | "hmac">
    return { symmetricKey, nonce, hmac, ciphertextDigest }
  })
  return { encrypt, seal } as const
})

/**
 * The options wrapped for every recipient in one JWE, serialized as go-jose's FullSerialize does (flattened for one
 * recipient with everything in the protected header, general with per-recipient `alg` headers for several).
 */
export const wrapKeys = (recipients: Arr.NonEmptyReadonlyArray<Recipient>, plaintext: Uint8Array) =>
  Effect.tryPromise({
    try: (): Promise<unknown> => {
      const [first] = recipients
      if (recipients.length === 1) {
        return new FlattenedEncrypt(plaintext)
          .setProtectedHeader({ alg: first.algorithm, enc: contentEncryption })
          .encrypt(first.key)
      }
      const jwe = new GeneralEncrypt(plaintext).setProtectedHeader({ enc: contentEncryption })
      for (const { algorithm, key } of recipients) jwe.addRecipient(key).setUnprotectedHeader({ alg: algorithm })
      return jwe.encrypt()
    },
    catch: (cause) =>
      new LayerEncryptionError({
        message: `cannot wrap the layer key for ${recipients.map((r) => r.file).join(", ")}: ${String(cause)}`,
        cause
      })
  })

/** The layer annotations that let a holder of one of the recipients' private keys decrypt the layer. */
export const encryptionAnnotations = Effect.fn("LayerEncryption.annotations")(function*(
  recipients: Arr.NonEmptyReadonlyArray<Recipient>,
  envelope: Envelope
) {
  const jwe = yield* wrapKeys(recipients, new TextEncoder().encode(privateOptions(envelope)))
  return {
    [keysAnnotation]: base64(JSON.stringify(jwe)),
    [publicOptionsAnnotation]: base64(publicOptions(envelope))
  }
})
