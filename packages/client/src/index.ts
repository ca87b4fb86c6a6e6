export * from "./CheckpointerClient.ts"
