import { FileSystem, Path } from "@effect/platform"
import { Effect } from "effect"
import { generateKeyPairSync } from "node:crypto"
import { failedTo } from "./Tools.ts"

/**
 * CHECKPOINT_ENCRYPTION_KEYS-style recipients for the benchmarks: one RSA 4096 and one EC P-256 public key, written as
 * PEM files into `dir`; answers their paths.
 */
export const writeRecipients = (dir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const recipients = [
      generateKeyPairSync("rsa", { modulusLength: 4096 }).publicKey,
      generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey
    ]
    return yield* Effect.forEach(recipients, (key, i) => {
      const file = path.join(dir, `recipient-${i}.pub.pem`)
      return Effect.as(fs.writeFileString(file, key.export({ type: "spki", format: "pem" }).toString()), file)
    })
  }).pipe(Effect.mapError(failedTo("write the recipients' public keys")))
