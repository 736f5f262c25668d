"""OpenFace 2.2.0's model files that torch_clnf uses: where they come from, their sizes and SHA-256 sums.

OpenFace's license forbids redistributing them, so torch_clnf ships none: ``torch-clnf
download-models`` (:mod:`torch_clnf.download`) fetches them from OpenFace's own sources. The text
and small binary files come from OpenFace's git tag; the four CEN files of CE-CLM, too large for
git, from the links in OpenFace's ``download_models`` scripts (Dropbox, then OneDrive).
"""
from __future__ import annotations

from dataclasses import dataclass

MODELS_ENV = "TORCH_CLNF_MODELS"             # where the files are looked for (and downloaded to)
OPENFACE_TAG = "OpenFace_2.2.0"
GIT_URL = f"https://raw.githubusercontent.com/TadasBaltrusaitis/OpenFace/{OPENFACE_TAG}/lib/local/LandmarkDetector/model/"


@dataclass(frozen=True)
class ModelFile:
    """One file of OpenFace's model folder.

    Attributes:
        path: relative to the model folder, ``/``-separated.
        size: bytes.
        sha256: hex digest of the file at OpenFace's tag; None where OpenFace publishes none and
            none was available to record (the CEN files: checked by size only).
        urls: where to fetch it, tried in order; empty: :data:`GIT_URL` + ``path``.
    """

    path: str
    size: int
    sha256: str | None
    urls: tuple[str, ...] = ()


# CLNF (main_clnf_general.txt), its part models, the validator it names and the MTCNN detector.
CLNF_FILES = tuple(ModelFile(*row) for row in (
    ("main_clnf_general.txt", 689, "532753cc2238d3e3dc398fff09b7b385a7edd7306a1edc2a22dac3ed2abdeb6e"),
    ("clnf_general.txt", 234, "3e38c393427481b6c715f491de1fe76ebf9d283afddc2bf7ec7765bc7d8a2c23"),
    ("haarAlign.txt", 117, "354625bd2a6cbdb1fc7a62352ad74e94c79744c9296e682cb8f6100d54213ffa"),
    ("tris_68.txt", 5351, "dca0c54fbd7683444f39534f803e037ba1df80a5cfd72ce8101cb7ff58e54193"),
    ("pdms/In-the-wild_aligned_PDM_68.txt", 69023, "b9eafb292b18505b55cdbc5d8ba45413709cd300cf3e7e8d1946cd0f5c5b94b1"),
    ("patch_experts/ccnf_patches_0.25_general.txt", 2429528,
     "18f4a62387a9cadcb49177db5f8726d73f3d4675bed60cb965e8256590553a48"),
    ("patch_experts/ccnf_patches_0.35_general.txt", 2429528,
     "ec26c1590f7992566943ad252af0ebb9e569095ce277d8addbc6202a36fe5a33"),
    ("patch_experts/ccnf_patches_0.5_general.txt", 2429528,
     "0ae39776c24b1e1de2a03ac4650baddec7ae84a45dec77ab30c97431fdccfebf"),
    ("model_inner/main_clnf_inner.txt", 31, "d659390a75c3cf92a1165ed700a2228f9f588671d67d0862b3ff7b0fbfe96a60"),
    ("model_inner/clnf_inner.txt", 79, "9e6ba849ef773a314471bec98f486f461b43b2d72890afb12ad93482eb0698f1"),
    ("model_inner/pdms/pdm_51_inner.txt", 48934, "28412e9dda64e95a5fab618ecda2b5dc1802187da4894d27965715ab361cb2f7"),
    ("model_inner/patch_experts/ccnf_patches_1.00_inner.txt", 2043100,
     "79eb8ab716abe420a1604c8db8c107e0b9774bedfd91f595875e6bad0d37156c"),
    ("model_eye/main_clnf_synth_left.txt", 36, "974004db5c87046be362a9802d2c8241c168ba3c1b19d2915ac161ae197bb252"),
    ("model_eye/main_clnf_synth_right.txt", 37, "8f116d8df1f32a9022b4e4b9ce3b134774b0732441ea6585e90b75628e86ee10"),
    ("model_eye/clnf_left_synth.txt", 164, "5f652def0b109849c510c0b8f17fb779d5487f7a2a927b772a6a290aed929a0e"),
    ("model_eye/clnf_right_synth.txt", 151, "b1453f8272bdd601ef54f569c2b35490203f8d625c99e2667abd74e8769da030"),
    ("model_eye/pdms/pdm_28_eye_3D_closed.txt", 9318, "8034805a0de072dafd0f6daecd71ee3f44292bc860bff6425725feac63e045f2"),
    ("model_eye/pdms/pdm_28_l_eye_3D_closed.txt", 9304,
     "eaf275c1286d5e03ea695b8250bffcef95084bf67598dfc9f03121d16b9b713f"),
    ("model_eye/patch_experts/ccnf_patches_1.00_synth_lid_.txt", 104368,
     "bc5f628dbcd0f24eabe5e2b7f2a6995c513ebb93ab63b03449c5f5f05a777939"),
    ("model_eye/patch_experts/ccnf_patches_1.50_synth_lid_.txt", 104368,
     "601a74b91930c2648676615278b959eb67f860e9757b169ee59bd41ac994cb9b"),
    ("model_eye/patch_experts/left_ccnf_patches_1.00_synth_lid_.txt", 104384,
     "8fe3229cda73dc49fcc27635fb875941e4d28b342c0f9f49bbcfc8ab9711cc07"),
    ("model_eye/patch_experts/left_ccnf_patches_1.50_synth_lid_.txt", 104384,
     "1c728e667b3e00ce5feb4eb8a5f68c174af5bb1f80b7ee8d3d01df6023917581"),
    ("detection_validation/validator_cnn.txt", 2074228, "29751dd4128978a1b351f09f15ae2d78e3e45169dd1e2dede60a55cc3f39a3c4"),
    ("mtcnn_detector/MTCNN_detector.txt", 42, "7dd20c7aa0335e59eeb6947c2bd94ef06c41f643aff428d36800fa1f09c65d5e"),
    ("mtcnn_detector/PNet.dat", 35088, "22dfd0a96ec983e99b21c0e214d89d55ea9a471eedd53e5a48203f22bcb4c489"),
    ("mtcnn_detector/RNet.dat", 454912, "95e9c4203ca0a08c84520fa5fd658834213ed2453a7359f4d9514a06762f91e9"),
    ("mtcnn_detector/ONet.dat", 1729592, "4c853ae5b461abe4d41f1cd77625895cd71452956c63c622fd75a3b820fb1d31"),
))


def _cen(scale: str, size: int, dropbox: str, onedrive: str) -> ModelFile:
    name = f"cen_patches_{scale}_of.dat"
    return ModelFile(f"patch_experts/{name}", size, None, (
        f"https://www.dropbox.com/s/{dropbox}/{name}?dl=1",
        f"https://onedrive.live.com/download?cid=2E2ADA578BFF6E6E&resid=2E2ADA578BFF6E6E%21{onedrive}"))


# CE-CLM (main_ceclm_general.txt): its spec files, validator and the four CEN expert files (430 MB).
CECLM_FILES = tuple(ModelFile(*row) for row in (
    ("main_ceclm_general.txt", 335, "52f38548cffab1731f80e9e71f22a8b29373a2750eb6dc718069d56e82997543"),
    ("cen_general.txt", 301, "3c30ddb49f531508c37f74be303f30997264f68f13f277a6f58e4e6f32979ade"),
    ("early_term_cen_of.txt", 133, "cf6e97faf33b4ac3f485a1ecdd828fe508a806859422137f678b7a6156096a2b"),
    ("detection_validation/validator_cnn_68.txt", 2328608,
     "3e422e6bf1659dfd83231e988328635e62eb0c4f9ae6b3979052ebc7ee4b287a"),
)) + (
    _cen("0.25", 60_602_360, "7na5qsjzz8yfoer", "53072&authkey=AKqoZtcN0PSIZH4"),
    _cen("0.35", 60_602_360, "k7bj804cyiu474t", "53079&authkey=ANpDR1n3ckL_0gs"),
    _cen("0.50", 154_289_792, "ixt4vkbmxgab1iu", "53074&authkey=AGi-e30AfRc_zvs"),
    _cen("1.00", 154_289_792, "2t5t1sdpshzfhpj", "53070&authkey=AD6KjtYipphwBPc"),
)
