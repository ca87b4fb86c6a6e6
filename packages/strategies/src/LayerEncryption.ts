import { FileSystem } from "@effect/platform"
import { Array as Arr, ConfigError, Data, Effect, Either } from "effect"
import { FlattenedEncrypt, GeneralEncrypt } from "jose"
import { createCipheriv, createHmac, createPublicKey, randomBytes } from "node:crypto"
import type { KeyObject } from "node:crypto"
import { platformReason } from "./RegistryAuth.ts"

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

const curves: Readonly<Record<string, string>> = { prime256v1: "P-256", secp384r1: "P-384" }
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
    catch: (cause) => `is not a readable public key (${cause instanceof Error ? cause.message : String(cause)})`
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
      return curves[curve] === undefined
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
      Effect.mapError((error) =>
        ConfigError.InvalidData([keysVariable], `cannot read ${file} (${platformReason(error)})`)
      ),
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
 * A fresh AES-256-CTR cipher (16-byte nonce as the initial counter block, as Go's cipher.NewCTR) that authenticates
 * what it writes: encrypt-then-MAC.
 */
export const makeLayerCipher = () => {
  const symmetricKey = randomBytes(32)
  const nonce = randomBytes(16)
  const cipher = createCipheriv("aes-256-ctr", symmetricKey, nonce)
  const hmac = createHmac("sha256", symmetricKey)
  const encrypt = (chunk: Uint8Array): Buffer => {
    const encrypted = cipher.update(chunk)
    hmac.update(encrypted)
    return encrypted
  }
  const seal = (digest: string): Envelope => {
    cipher.final()
    return { symmetricKey, nonce, hmac: hmac.digest(), digest }
  }
  return { encrypt, seal } as const
}

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
