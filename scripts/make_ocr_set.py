#!/usr/bin/env python3
"""Generate the bundled synthetic OCR text-line evaluation set.

Writes degraded, tightly cropped text-line images (Chinese and mixed
Chinese/Latin/digits/punctuation) with ground truth into
``src/edgeslim/data/ocr_synth/``:

* ``000000.png`` ... : RGB text-line crops
* ``labels.tsv``     : ``filename<TAB>text`` (UTF-8, no header)
* ``split.json``     : ``{"calib": [...], "eval": [...]}`` (first 96 = calib)
* ``README.md``      : provenance and license

Generation is deterministic: every image uses its own RNG seeded from
(``--seed``, index), so the bytes only depend on the seed, the fonts and the
library versions (Pillow, OpenCV, NumPy, scikit-image).

Characters are drawn only from the charset of the PP-OCRv4 recognizer bundled
with ``rapidocr_onnxruntime`` (model metadata key ``character``) and only if
the chosen font has a glyph for them.

Usage::

    python scripts/make_ocr_set.py            # generate
    python scripts/make_ocr_set.py --check    # fp32 CER / line accuracy on eval split
    python scripts/make_ocr_set.py --check --real /path/to/crops/labels.tsv

Fonts (Debian)::

    apt-get install -y fonts-wqy-zenhei fonts-wqy-microhei fonts-noto-cjk
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "edgeslim" / "data" / "ocr_synth"

SEED = 20240611
N_IMAGES = 720
N_CALIB = 96
MAX_STORE_W = 512  # stored crops wider than this are downscaled (keeps the folder small)

APT_HINT = "apt-get update && apt-get install -y fonts-wqy-zenhei fonts-wqy-microhei fonts-noto-cjk"

# (label, file, face name inside the collection)
FONTS = [
    ("wqy-zenhei", "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", "WenQuanYi Zen Hei"),
    ("wqy-microhei", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "WenQuanYi Micro Hei"),
    ("noto-sans-sc-regular", "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "Noto Sans CJK SC"),
    ("noto-sans-sc-bold", "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", "Noto Sans CJK SC Bold"),
    ("noto-serif-sc-regular", "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", "Noto Serif CJK SC"),
    ("noto-serif-sc-bold", "/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc", "Noto Serif CJK SC Bold"),
]
FONT_WEIGHTS = [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]

# --------------------------------------------------------------------------
# Text sources (written for this script; frequent characters first)
# --------------------------------------------------------------------------
COMMON = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所"
    "去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从知使点"
    "业本把性女理化员力现实加量两体合机长关数文提正新开问很最信部高明通外手意己各全表间样物向品门重果海并因动"
    "等由次回什第西头内东电已制些平相正话情感原民至老水路总结利比美第真北建产务打报计气特少告何解处展话百题"
    "工先反接金四强入保二常步各万系界记车马认山设期今象叫放科光管代安色口五像身张书风度教往转世位难南直住条"
    "干离白亲观完影让团流六连路七八九零吃喝买卖店铺超市场饭菜面包茶酒肉鱼鸡鸭牛羊猪米油盐糖奶蛋果汁咖啡啤"
    "药医院诊所银行邮局学校宾馆酒店旅社商厦城广街巷号楼层室栋单元区县镇村省市路口站厅门票价元角分折扣优惠特"
    "销售新品上市热卖促活动欢迎光临营业时间电话手机网址地址服务中心专卖批发零售修理洗衣理发美容美甲烟酒百货"
    "五金建材家具家电数码通讯眼镜钟表服装鞋帽童装女装男装内衣床上用品化妆品母婴玩具文具书店花店宠物蛋糕烘焙"
    "火锅烧烤麻辣烫小吃快餐早点饺子馄饨米粉拉面炒饭盖浇饭套餐外卖停车场出入口安全通道禁止吸烟请勿小心地滑注"
    "意当心碰头紧急消防栓警察交通派出所政府委员会人民法院公安局税务工商社区居委会幼儿园小学中学大学医院急诊"
    "挂号收费药房住院部门诊楼办公室会议室洗手间卫生男女厕所电梯楼梯自动扶梯向上向下左右前后东南西北中华国际"
    "集团有限公司股份科技发展实业贸易物流快递广告传媒装饰设计工程建筑地产物业管理咨询投资金融保险证券基金信用"
    "福禄寿喜财富贵吉祥如意平安健康快乐幸福美好生活品质精致优选鲜香辣甜酸咸清淡营养绿色天然有机进口纯正原味"
    "江河湖海山川林森花草树木春夏秋冬风雨雪云月星阳光明亮红黄蓝绿紫白黑金银铜铁玉石珠宝钻龙凤虎狮鹤鹏华盛隆"
    "兴旺达顺泰丰裕鑫源恒昌宏伟博雅轩阁斋堂坊苑庄园居府第馆厦宫殿寺庙庵塔桥亭台楼阁湾港岛洲浦滩塘池井泉溪"
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
    "京沪津渝冀豫鲁晋陕皖闽赣湘鄂粤桂琼川贵云藏甘青宁新蒙辽吉黑苏浙台港澳北京上海天津重庆广州深圳杭州南京"
    "成都武汉西安长沙郑州济南青岛大连沈阳哈尔滨昆明贵阳南宁福州厦门合肥南昌太原石家庄兰州乌鲁木齐呼和浩特"
    "想做看听读写走跑跳坐站躺睡醒笑哭爱恨喜怒哀乐思念梦望希盼等待找寻发现创造改变提高增加减少保持坚持努力"
    "工作学习休息运动旅游购物娱乐游戏音乐电影电视节目新闻报纸杂志图书资料文件合同协议证明发票收据账单余额"
    "请问谢谢对不起没关系再见您好早上好晚安欢迎欢送祝贺恭喜生日快乐新年春节中秋国庆元旦端午清明重阳元宵"
)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁沈"
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "长沙", "郑州", "济南", "青岛",
          "大连", "沈阳", "昆明", "贵阳", "南宁", "福州", "厦门", "合肥", "南昌", "太原", "苏州", "无锡", "宁波",
          "温州", "佛山", "东莞", "珠海", "洛阳", "桂林", "三亚", "扬州", "绍兴", "嘉兴", "烟台", "潍坊", "保定"]
DISTRICTS = ["朝阳", "海淀", "东城", "西城", "浦东", "徐汇", "黄浦", "天河", "越秀", "福田", "南山", "西湖", "滨江",
             "鼓楼", "玄武", "武侯", "锦江", "江汉", "雁塔", "岳麓", "金水", "历下", "市南", "中山", "和平", "新城"]
ROADS = ["人民", "解放", "中山", "建设", "和平", "胜利", "文化", "新华", "长江", "黄河", "青年", "光明", "幸福",
         "振兴", "友谊", "团结", "朝阳", "学府", "科技", "工业", "花园", "滨河", "东风", "北京", "南京", "延安"]
ROAD_SUFFIX = ["路", "街", "大道", "东路", "西路", "南路", "北路", "中路", "大街", "巷"]
SHOP_PREFIX = ["老", "小", "大", "金", "鑫", "福", "喜", "好", "新", "华", "盛", "兴", "隆", "万家", "百姓", "阳光",
               "幸福", "美好", "快乐", "东方", "红星", "天天", "佳佳", "一品", "聚福", "全家", "乐购", "惠民"]
SHOP_GOODS = ["牛肉面", "拉面", "米粉", "火锅", "烧烤", "麻辣烫", "饺子", "包子", "水果", "蔬菜", "鲜花", "蛋糕",
              "面包", "奶茶", "咖啡", "茶叶", "烟酒", "五金", "建材", "家电", "数码", "手机", "眼镜", "服装", "鞋业",
              "童装", "母婴", "药", "文具", "图书", "宠物", "汽修", "洗车", "快递", "海鲜", "烤鸭", "炸鸡", "酸菜鱼",
              "小龙虾", "黄焖鸡", "凉皮", "串串", "冒菜", "干洗", "美发", "美甲", "足浴", "按摩", "超市", "便利"]
SHOP_TYPE = ["店", "馆", "铺", "行", "坊", "屋", "城", "中心", "超市", "专卖店", "批发部", "便利店", "大药房",
             "连锁店", "旗舰店", "生活馆", "工作室", "有限公司", "酒楼", "餐厅", "小吃", "商行", "门市部"]
NOTICES = ["禁止吸烟", "请勿停车", "小心地滑", "安全出口", "欢迎光临", "谢谢惠顾", "全场五折起", "买一送一",
           "新品上市", "限时特价", "正在营业", "暂停营业", "请排队等候", "当心碰头", "非工作人员禁止入内",
           "请勿倚靠", "节约用水", "随手关门", "出口", "入口", "收银台", "洗手间", "停车场", "消防通道禁止占用",
           "请出示健康码", "外卖自取", "扫码点餐", "支持微信支付宝", "本店招聘服务员", "旺铺转让", "清仓大甩卖",
           "门店地址已搬迁", "营业时间", "会员专享", "满100减20", "第二件半价", "新店开业", "店内有空调"]
PRODUCTS = ["纯牛奶", "酸奶", "矿泉水", "绿茶", "可乐", "方便面", "饼干", "薯片", "洗发水", "沐浴露", "牙膏",
            "洗衣液", "纸巾", "大米", "食用油", "酱油", "香醋", "鸡蛋", "苹果", "香蕉", "橙子", "西瓜", "葡萄",
            "手机壳", "充电器", "数据线", "耳机", "路由器", "电饭煲", "吹风机", "台灯", "插座", "电池", "雨伞"]
UNITS = ["元", "元/斤", "元/kg", "元/瓶", "元/盒", "元/件", "元/个", "元/袋", "元/份", "元/位"]
LATIN_WORDS = ["OPEN", "SALE", "Coffee", "WiFi", "KTV", "Hotel", "Bank", "SHOP", "Bakery", "Market", "Pizza",
               "Fashion", "Beauty", "Mall", "Store", "Center", "Service", "Express", "Super", "Fresh", "Food",
               "Milk", "Cafe", "Bar", "Book", "Mobile", "Design", "Studio", "Home", "Best", "Good", "Free",
               "Welcome", "Exit", "Parking", "Hot", "New", "Taxi", "Bus", "Metro", "Hair", "Salon", "Club",
               "China", "City", "Plaza", "Park", "Garden", "Station", "Office", "Smart", "Pro", "Max", "Plus",
               "VIP", "ATM", "LED", "USB", "GPS", "DIY", "CEO", "No", "Tel", "Fax", "Email", "OK", "Mini"]
BRANDS = ["iPhone", "Huawei", "Xiaomi", "OPPO", "vivo", "Lenovo", "Canon", "Nike", "Adidas", "Haier", "Midea",
          "Gree", "TCL", "Sony", "Philips", "Dell", "HP", "Intel", "Apple", "Samsung", "BYD", "Geely"]
PUNCT_ZH = "，。、：；！？"
PUNCT_PAIRS_ZH = ["（）", "“”", "《》", "【】"]


class TextGen:
    """Realistic sign / document text drawn from the recognizer charset."""

    def __init__(self, charset: set[str]):
        self.charset = charset
        seen = []
        for ch in COMMON:
            if ch in charset and ch not in seen and "\u4e00" <= ch <= "\u9fff":
                seen.append(ch)
        self.common = seen
        # Zipf-like weights over the frequency-ordered list
        w = 1.0 / (np.arange(len(seen)) + 30.0)
        self.common_p = w / w.sum()
        # the remaining CJK characters of the charset (rare, low probability)
        self.rare = sorted(ch for ch in charset if "\u4e00" <= ch <= "\u9fff" and ch not in set(seen))

    # -- helpers
    def cjk(self, rng, n):
        out = []
        for _ in range(n):
            if rng.random() < 0.1 and self.rare:
                out.append(self.rare[rng.integers(len(self.rare))])
            else:
                out.append(self.common[rng.choice(len(self.common), p=self.common_p)])
        return "".join(out)

    @staticmethod
    def pick(rng, seq):
        return seq[rng.integers(len(seq))]

    def digits(self, rng, n):
        return "".join(str(rng.integers(10)) for _ in range(n))

    def price(self, rng):
        v = rng.choice([rng.integers(1, 20), rng.integers(10, 200), rng.integers(100, 5000)])
        if rng.random() < 0.5:
            return f"{v}.{rng.integers(0, 10)}{self.pick(rng, ['0', '8', '9', '5'])}"
        return str(v)

    def phone(self, rng):
        k = rng.integers(4)
        if k == 0:
            return "1" + self.pick(rng, ["3", "5", "8", "7", "9"]) + self.digits(rng, 9)
        if k == 1:
            return "1" + self.pick(rng, ["3", "5", "8"]) + self.digits(rng, 1) + "-" + self.digits(rng, 4) + "-" + self.digits(rng, 4)
        if k == 2:
            return "0" + self.digits(rng, 2 + rng.integers(2)) + "-" + self.digits(rng, 8)
        return "400-" + self.digits(rng, 3) + "-" + self.digits(rng, 4)

    def date(self, rng):
        y, m, d = rng.integers(2015, 2026), rng.integers(1, 13), rng.integers(1, 29)
        k = rng.integers(5)
        if k == 0:
            return f"{y}年{m}月{d}日"
        if k == 1:
            return f"{y}-{m:02d}-{d:02d}"
        if k == 2:
            return f"{y}.{m:02d}.{d:02d}"
        if k == 3:
            return f"{m}月{d}日"
        return f"{y}/{m:02d}/{d:02d}"

    def time_range(self, rng):
        return f"{rng.integers(6, 11)}:{self.pick(rng, ['00', '30'])}-{rng.integers(17, 24)}:{self.pick(rng, ['00', '30'])}"

    # -- categories
    def shop_sign(self, rng):
        k = rng.integers(4)
        if k == 0:
            return self.pick(rng, SHOP_PREFIX) + self.pick(rng, SHOP_GOODS) + self.pick(rng, SHOP_TYPE)
        if k == 1:
            return self.pick(rng, SURNAMES) + self.pick(rng, ["记", "家", "氏", "师傅", "大妈", "姐"]) + self.pick(rng, SHOP_GOODS) + self.pick(rng, SHOP_TYPE)
        if k == 2:
            return self.cjk(rng, rng.integers(2, 4)) + self.pick(rng, SHOP_GOODS) + self.pick(rng, SHOP_TYPE)
        return self.pick(rng, CITIES) + self.cjk(rng, 2) + self.pick(rng, ["科技", "贸易", "实业", "物流", "文化传媒", "建筑工程", "餐饮管理"]) + "有限公司"

    def address(self, rng):
        k = rng.integers(3)
        road = self.pick(rng, ROADS) + self.pick(rng, ROAD_SUFFIX)
        if k == 0:
            return f"{self.pick(rng, CITIES)}市{self.pick(rng, DISTRICTS)}区{road}{rng.integers(1, 999)}号"
        if k == 1:
            return f"{road}{rng.integers(1, 300)}号{rng.integers(1, 30)}栋{rng.integers(1, 6)}单元{rng.integers(1, 30)}{rng.integers(1, 5):02d}室"
        return "地址：" + f"{self.pick(rng, DISTRICTS)}区{road}{rng.integers(1, 500)}号"

    def price_line(self, rng):
        k = rng.integers(5)
        if k == 0:
            return self.pick(rng, PRODUCTS) + self.price(rng) + self.pick(rng, UNITS)
        if k == 1:
            return self.pick(rng, ["特价", "原价", "现价", "售价", "会员价", "零售价"]) + self.pick(rng, ["：", "", "￥"]) + self.price(rng) + self.pick(rng, ["", "元"])
        if k == 2:
            return "￥" + self.price(rng)
        if k == 3:
            return f"满{rng.integers(1, 20) * 10}减{rng.integers(1, 10) * 5}"
        return self.pick(rng, ["全场", "部分商品", "指定款"]) + f"{rng.integers(3, 10)}折" + self.pick(rng, ["", "起", "优惠"])

    def phone_line(self, rng):
        lab = self.pick(rng, ["电话：", "热线：", "手机：", "订餐电话", "咨询热线", "TEL:", "Tel:", "联系电话：", "", "☆"])
        lab = "" if lab == "☆" else lab
        return lab + self.phone(rng)

    def date_line(self, rng):
        k = rng.integers(4)
        if k == 0:
            return self.pick(rng, ["生产日期：", "有效期至", "日期：", "开业时间", ""]) + self.date(rng)
        if k == 1:
            return "营业时间" + self.pick(rng, ["：", ""]) + self.time_range(rng)
        if k == 2:
            return self.date(rng) + " " + f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}"
        return f"NO.{self.digits(rng, rng.integers(4, 9))}"

    def product(self, rng):
        k = rng.integers(4)
        if k == 0:
            return self.pick(rng, BRANDS) + self.pick(rng, PRODUCTS)
        if k == 1:
            return self.pick(rng, PRODUCTS) + f"{self.pick(rng, [250, 330, 500, 550, 1000, 1500])}{self.pick(rng, ['ml', 'g', 'mL', 'ML'])}"
        if k == 2:
            return f"{self.pick(rng, BRANDS)}{self.pick(rng, ['Pro', 'Max', 'Plus', 'Mini', 'X'])}{rng.integers(1, 20)}"
        return f"{rng.integers(2, 13)}{self.pick(rng, ['寸', '英寸', 'W', 'V', 'GB', 'TB', 'mAh'])}" + self.pick(rng, PRODUCTS)

    def latin_mix(self, rng):
        k = rng.integers(4)
        if k == 0:
            return self.pick(rng, LATIN_WORDS) + self.pick(rng, SHOP_GOODS)
        if k == 1:
            w = self.pick(rng, LATIN_WORDS)
            return w.upper() if rng.random() < 0.5 else w + " " + self.pick(rng, LATIN_WORDS)
        if k == 2:
            return self.pick(rng, SHOP_PREFIX) + self.pick(rng, SHOP_GOODS) + self.pick(rng, ["KTV", "WiFi", "24h", "24小时", "DIY", "VIP"])
        return "www." + "".join(self.pick(rng, "abcdefghijklmnopqrstuvwxyz") for _ in range(rng.integers(3, 9))) + self.pick(rng, [".com", ".cn", ".net", ".com.cn"])

    def notice(self, rng):
        s = self.pick(rng, NOTICES)
        if rng.random() < 0.3:
            s += self.pick(rng, ["！", "。", ""])
        return s

    def sentence(self, rng):
        parts = []
        n = rng.integers(1, 3)
        for i in range(n):
            parts.append(self.cjk(rng, rng.integers(3, 10)))
            if i < n - 1:
                parts.append(self.pick(rng, PUNCT_ZH[:3]))
        s = "".join(parts)
        r = rng.random()
        if r < 0.2:
            p = self.pick(rng, PUNCT_PAIRS_ZH)
            s = p[0] + s + p[1]
        elif r < 0.55:
            s += self.pick(rng, "。！？；")
        elif r < 0.7:
            s = f"{rng.integers(1, 20)}." + s
        return s

    def words(self, rng):
        # plain Chinese words / names (2-8 chars)
        k = rng.integers(3)
        if k == 0:
            return self.pick(rng, SURNAMES) + self.cjk(rng, rng.integers(1, 3))
        if k == 1:
            return self.cjk(rng, rng.integers(2, 9))
        return self.pick(rng, CITIES) + self.pick(rng, ["站", "东站", "火车站", "机场", "汽车站", "欢迎您", "大学", "人民医院", "第一中学"])

    CATS = ["shop_sign", "address", "price_line", "phone_line", "date_line", "product", "latin_mix", "notice",
            "sentence", "words"]
    CAT_P = [0.16, 0.1, 0.1, 0.07, 0.07, 0.08, 0.08, 0.1, 0.16, 0.08]

    def __call__(self, rng, covered):
        for _ in range(50):
            cat = self.CATS[rng.choice(len(self.CATS), p=self.CAT_P)]
            s = getattr(self, cat)(rng)
            s = " ".join(s.split())
            s = "".join(ch for ch in s if ch == " " or (ch in self.charset and ord(ch) in covered))
            s = " ".join(s.split())
            if 2 <= len(s) <= 25:
                return s, cat
        return self.cjk(rng, 4), "words"


# --------------------------------------------------------------------------
# Rendering and degradation
# --------------------------------------------------------------------------
def load_charset():
    import onnxruntime as ort

    model = rec_model_path()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    chars = sess.get_modelmeta().custom_metadata_map["character"].splitlines()
    return chars


def rec_model_path() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"


def load_fonts():
    from fontTools.ttLib import TTCollection

    missing = [p for _, p, _ in FONTS if not os.path.exists(p)]
    if missing:
        sys.exit(
            "error: CJK fonts not found: " + ", ".join(missing) + "\n"
            "install them with:\n    " + APT_HINT
        )
    out = []
    for label, path, face in FONTS:
        coll = TTCollection(path, lazy=True)
        idx = None
        for i, f in enumerate(coll.fonts):
            if f["name"].getDebugName(4) == face:
                idx = i
                break
        if idx is None:
            sys.exit(f"error: face {face!r} not found in {path}; reinstall with:\n    {APT_HINT}")
        cmap = set(coll.fonts[idx].getBestCmap().keys())
        out.append({"label": label, "path": path, "index": idx, "face": face, "cmap": cmap})
    return out


_BG_CACHE: dict = {}


def backgrounds():
    if not _BG_CACHE:
        import skimage.data as skd

        for name in ["astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field",
                     "immunohistochemistry", "brick", "grass", "gravel", "camera", "moon", "coins"]:
            a = getattr(skd, name)()
            if a.ndim == 2:
                a = np.stack([a] * 3, -1)
            _BG_CACHE[name] = a[..., :3].astype(np.float32)
    return _BG_CACHE


TEXTURES = ["brick", "grass", "gravel", "moon", "coins"]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
          "brick", "grass", "gravel", "camera"]

SIGN_COMBOS = [  # (background RGB, text RGB)
    ((200, 30, 35), (255, 255, 255)), ((200, 30, 35), (255, 230, 80)), ((20, 70, 160), (255, 255, 255)),
    ((10, 110, 60), (255, 255, 255)), ((250, 250, 245), (20, 20, 20)), ((250, 250, 245), (200, 20, 30)),
    ((250, 250, 245), (20, 60, 150)), ((255, 215, 40), (20, 20, 20)), ((255, 215, 40), (190, 20, 20)),
    ((25, 25, 25), (240, 200, 90)), ((25, 25, 25), (255, 255, 255)), ((120, 70, 40), (250, 230, 190)),
    ((235, 120, 30), (255, 255, 255)), ((40, 150, 200), (255, 255, 255)), ((180, 180, 185), (30, 30, 30)),
]


def crop_photo(rng, name, h, w):
    img = backgrounds()[name]
    H, W = img.shape[:2]
    import cv2

    s = max(h / H, w / W) * rng.uniform(1.0, 2.5)
    img = cv2.resize(img, (max(w, int(math.ceil(W * s))), max(h, int(math.ceil(H * s)))), interpolation=cv2.INTER_LINEAR)
    H, W = img.shape[:2]
    y = rng.integers(0, H - h + 1)
    x = rng.integers(0, W - w + 1)
    return img[y:y + h, x:x + w].copy()


def render_mask(text, font, spacing):
    from PIL import Image, ImageDraw

    asc, desc = font.getmetrics()
    if spacing == 0:
        x0, y0, x1, y1 = font.getbbox(text)
        width = x1
    else:
        width = sum(font.getlength(c) for c in text) + spacing * (len(text) - 1)
    width = int(math.ceil(width)) + 4
    img = Image.new("L", (width, asc + desc + 4), 0)
    d = ImageDraw.Draw(img)
    if spacing == 0:
        d.text((2, 2), text, font=font, fill=255)
    else:
        x = 2.0
        for c in text:
            d.text((x, 2), c, font=font, fill=255)
            x += font.getlength(c) + spacing
    m = np.asarray(img, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(m > 0.05)
    if len(ys) == 0:
        return None
    return m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def lum(c):
    c = np.asarray(c, np.float32)
    return float(0.299 * c[..., 0] + 0.587 * c[..., 1] + 0.114 * c[..., 2]) if c.ndim == 1 else None


def make_image(idx, text, font_rec, seed):
    import cv2
    from PIL import ImageFont

    rng = np.random.default_rng([seed, idx, 1])
    # final text-line height; very low resolution images get milder other degradations
    # so that (almost) every line stays legible
    srng = np.random.default_rng([seed, idx, 2])
    th_lo = int(srng.integers(14, 24)) if srng.random() < 0.55 else int(srng.integers(24, 49))
    low = th_lo < 19
    size = int(rng.integers(44, 68))
    font = ImageFont.truetype(font_rec["path"], size, index=font_rec["index"])
    spacing = 0 if (len(text) > 12 or rng.random() < 0.75) else int(size * rng.uniform(0.05, 0.4))
    m = render_mask(text, font, spacing)
    th, tw = m.shape
    # place text on a canvas with generous margins so warping never shows borders
    pad_y, pad_x = int(size * 0.9), int(size * 0.9)
    H, W = th + 2 * pad_y, tw + 2 * pad_x
    mask = np.zeros((H, W), np.float32)
    mask[pad_y:pad_y + th, pad_x:pad_x + tw] = m

    # ---- background and colours
    kind = rng.choice(["photo", "sign", "paper"], p=[0.4, 0.4, 0.2])
    if kind == "photo":
        bg = crop_photo(rng, PHOTOS[rng.integers(len(PHOTOS))], H, W)
        mu = bg.mean(axis=(0, 1), keepdims=True)
        bg = mu + (bg - mu) * rng.uniform(0.3, 0.8)  # signs rarely sit on very busy texture
        if rng.random() < 0.5:
            k = int(rng.integers(1, 4)) * 2 + 1
            bg = cv2.GaussianBlur(bg, (0, 0), k)
        region = bg[pad_y:pad_y + th, pad_x:pad_x + tw]
        bl = float((region * np.array([0.299, 0.587, 0.114], np.float32)).sum(-1).mean())
        if rng.random() < 0.5:  # push background away from text to keep it legible
            bg = bg * rng.uniform(0.35, 0.7) if bl > 110 and rng.random() < 0.5 else bg
        bl = float((bg[pad_y:pad_y + th, pad_x:pad_x + tw] * np.array([0.299, 0.587, 0.114], np.float32)).sum(-1).mean())
        if bl < 120:
            base = rng.uniform(200, 255)
            fg = np.clip(np.array([base, base, base]) + rng.normal(0, 25, 3), 150, 255)
        else:
            base = rng.uniform(0, 60)
            fg = np.clip(np.array([base, base, base]) + rng.normal(0, 30, 3), 0, 120)
            if rng.random() < 0.3:
                fg = np.array(SIGN_COMBOS[rng.integers(len(SIGN_COMBOS))][1], np.float32) * 0.7
    elif kind == "sign":
        bcol, fcol = SIGN_COMBOS[rng.integers(len(SIGN_COMBOS))]
        bg = np.ones((H, W, 3), np.float32) * (np.array(bcol, np.float32) + rng.normal(0, 12, 3))
        fg = np.array(fcol, np.float32) + rng.normal(0, 10, 3)
        tex = crop_photo(rng, TEXTURES[rng.integers(len(TEXTURES))], H, W).mean(-1, keepdims=True)
        a = rng.uniform(0.05, 0.35)
        bg = bg * (1 - a) + bg * (tex / 128.0) * a
    else:
        base = rng.uniform(200, 250)
        bg = np.ones((H, W, 3), np.float32) * (base + rng.normal(0, 6, 3))
        tex = crop_photo(rng, TEXTURES[rng.integers(len(TEXTURES))], H, W).mean(-1, keepdims=True)
        a = rng.uniform(0.03, 0.2)
        bg = bg * (1 - a) + bg * (tex / 128.0) * a
        fg = np.array([rng.uniform(0, 70)] * 3, np.float32) + rng.normal(0, 8, 3)
        if rng.random() < 0.2:
            fg = np.array([20, 40, 140], np.float32)
    fg = np.clip(fg, 0, 255).astype(np.float32)
    # keep a minimum luminance contrast between text and the background under it
    wl = np.array([0.299, 0.587, 0.114], np.float32)
    lb = float((bg[pad_y:pad_y + th, pad_x:pad_x + tw] * wl).sum(-1).mean())
    for _ in range(4):
        if abs(float(fg @ wl) - lb) >= 90:
            break
        fg = fg * 0.45 if lb > 127 else 255 - (255 - fg) * 0.45

    # ---- outline / drop shadow
    img = bg.copy()
    r = rng.random()
    if r < 0.15:  # outline in contrasting colour
        k = max(3, int(size * rng.uniform(0.06, 0.12)) | 1)
        outline = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        ocol = 255.0 - fg
        img = img * (1 - outline[..., None]) + ocol * outline[..., None]
    elif r < 0.3:  # drop shadow
        dx, dy = int(rng.integers(1, max(2, size // 12))), int(rng.integers(1, max(2, size // 12)))
        sh = np.roll(np.roll(cv2.GaussianBlur(mask, (0, 0), 1.5), dy, 0), dx, 1) * rng.uniform(0.4, 0.8)
        img = img * (1 - sh[..., None])
    img = img * (1 - mask[..., None]) + fg * mask[..., None]

    # ---- uneven lighting: gradient, shadow band, highlight
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if rng.random() < 0.7:
        ang = rng.uniform(0, 2 * np.pi)
        g = (np.cos(ang) * (xx / W) + np.sin(ang) * (yy / H))
        g = (g - g.min()) / max(1e-6, g.max() - g.min())
        lo = rng.uniform(0.45, 0.95)
        img = img * (lo + (1 - lo) * g)[..., None]
    if rng.random() < 0.35:
        ang = rng.uniform(-1.2, 1.2)
        d = np.cos(ang) * (xx - W * rng.uniform(0.1, 0.9)) + np.sin(ang) * (yy - H / 2)
        width = rng.uniform(0.3, 1.5) * th
        soft = rng.uniform(0.1, 0.6) * th + 1
        band = 1.0 / (1.0 + np.exp((np.abs(d) - width) / soft))
        if rng.random() < 0.5:  # half-plane shadow instead of a band
            band = 1.0 / (1.0 + np.exp(-d / soft))
        img = img * (1 - rng.uniform(0.25, 0.5 if low else 0.65) * band)[..., None]
    if rng.random() < 0.12:
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        rad = rng.uniform(0.5, 2.0) * th
        spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rad ** 2))
        img = img + rng.uniform(60, 160) * spot[..., None]
    img = np.clip(img, 0, 255)

    # ---- perspective warp + rotation
    jit = rng.uniform(0.0, 0.18) * th
    src = np.float32([[pad_x, pad_y], [pad_x + tw, pad_y], [pad_x + tw, pad_y + th], [pad_x, pad_y + th]])
    dst = src + rng.normal(0, jit / 2, (4, 2)).clip(-jit, jit).astype(np.float32)
    ang = math.radians(rng.normal(0, 2.0))
    c = np.float32([W / 2, H / 2])
    R = np.float32([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    dst = (dst - c) @ R.T + c
    M = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    img = cv2.warpPerspective(img, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    wm = cv2.warpPerspective(mask, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    # ---- optical blur at render scale
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5 if low else 2.6) * size / 56)
    if rng.random() < 0.2:
        L = int(rng.integers(3, 6 if low else 10))
        k = np.zeros((L, L), np.float32)
        k[L // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D((L / 2 - 0.5, L / 2 - 0.5), rng.uniform(0, 180), 1.0)
        k = cv2.warpAffine(k, rot, (L, L))
        k /= max(k.sum(), 1e-6)
        img = cv2.filter2D(img, -1, k)

    # ---- tight crop like a detector box (small, jittered margins)
    ys, xs = np.nonzero(wm > 0.3)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    hh = y1 - y0
    my0, my1 = (rng.uniform(0.03, 0.22, 2) * hh).astype(int)
    mx0, mx1 = (rng.uniform(0.03, 0.35, 2) * hh).astype(int)
    y0, y1 = max(0, y0 - my0), min(H, y1 + my1)
    x0, x1 = max(0, x0 - mx0), min(W, x1 + mx1)
    img = img[y0:y1, x0:x1]

    # ---- resolution: downscale (sometimes strongly), optionally upscale back
    ch, cw = img.shape[:2]
    th_lo = min(th_lo, ch)
    wlo = max(8, int(round(cw * th_lo / ch)))
    img = cv2.resize(img, (wlo, th_lo), interpolation=cv2.INTER_AREA)
    if th_lo < 30 and rng.random() < 0.5:
        up = int(rng.integers(32, 49))
        interp = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST][rng.choice(3, p=[0.5, 0.35, 0.15])]
        img = cv2.resize(img, (max(8, int(round(wlo * up / th_lo))), up), interpolation=interp)
    if img.shape[1] > MAX_STORE_W:
        s = MAX_STORE_W / img.shape[1]
        nh = max(16, int(round(img.shape[0] * s)))
        if nh < img.shape[0]:
            nw = int(round(img.shape[1] * nh / img.shape[0]))
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)

    # ---- contrast loss / haze
    if rng.random() < 0.5:
        cf = rng.uniform(0.65 if low else 0.4, 0.9)
        mean = img.mean()
        img = mean + (img - mean) * cf + rng.uniform(-20, 30)
    # ---- sensor noise
    if rng.random() < 0.7:
        sig = rng.uniform(2, 8 if low else 14)
        n = rng.normal(0, sig, img.shape[:2])[..., None]
        if rng.random() < 0.3:
            n = n + rng.normal(0, sig * 0.5, img.shape)
        img = img + n
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    # ---- JPEG compression
    if rng.random() < 0.65:
        q = int(rng.integers(30 if low else 12, 80 if low else 75))
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(img)


README = """# ocr_synth: synthetic Chinese text-line evaluation set

{n} degraded text-line crops (Chinese and mixed Chinese / Latin / digits /
punctuation, 2-25 characters) used to measure how much compression hurts the
PP-OCRv4 text recognizer.

* `NNNNNN.png`: RGB crops, height 14-48 px (lines wider than {maxw} px are downscaled, keeping height >= 16 px)
* `labels.tsv`: `filename<TAB>text`, UTF-8, no header
* `split.json`: fixed split, `calib` = first {nc} images (calibration),
  `eval` = the other {ne} (evaluation)

## How it was generated

`python scripts/make_ocr_set.py` (seed {seed}); fully deterministic for the
same fonts and library versions (Pillow, OpenCV, NumPy, scikit-image).

* Text: templates for shop signs, addresses, prices, phone numbers, dates,
  product names, notices, short sentences and Latin words, filled with
  frequency-weighted common Chinese characters (10 % rare characters). Only
  characters from the recognizer charset (`character` metadata of
  `ch_PP-OCRv4_rec_infer.onnx` in `rapidocr_onnxruntime`) that the chosen font
  covers are used.
* Fonts (Debian `fonts-wqy-zenhei`, `fonts-wqy-microhei`, `fonts-noto-cjk`):
  {fonts}.
* Backgrounds: crops of scikit-image sample images (astronaut, coffee, chelsea,
  rocket, cat, hubble_deep_field, immunohistochemistry, brick, grass, gravel,
  camera, moon, coins) loaded at generation time, plain sign colours with
  texture, or paper.
* Degradations, randomly combined with random strength per image: outline or
  drop shadow, lighting gradients, shadow bands / half-plane shadows,
  highlights, perspective warp and rotation (a few degrees), gaussian and
  motion blur, tight detector-like crop with jittered margins, downscaling to
  14-48 px height (sometimes upscaled back with linear / cubic / nearest),
  contrast loss, gaussian noise, JPEG compression (quality 12-75).

`python scripts/make_ocr_set.py --check` runs the fp32 recognizer over the
eval split and prints CER and exact-line accuracy (reference, generated with
Pillow 13.0, OpenCV 5.0, NumPy 2.4, scikit-image 0.26, onnxruntime 1.32:
fp32 `ch_PP-OCRv4_rec_infer.onnx` CER 0.042, line accuracy 0.81). The check
mirrors RapidOCR's `TextRecognizer` for a batch of one: image read as BGR,
resized to height 48 with width ceil(48*w/h) (bilinear), scaled to [-1, 1],
right-padded with zeros to at least 320 px, CTC greedy decoding (blank = 0,
repeats merged).

## License

Generated data, released under the Apache License 2.0 like the rest of the
project. The background crops derive from scikit-image's bundled sample
images (public domain / CC0 or permissively licensed, see scikit-image's
`skimage/data/README.txt`).
"""


def generate(out_dir: Path, n: int, seed: int):
    import cv2
    from PIL import Image

    cv2.setNumThreads(1)
    chars = load_charset()
    charset = set(chars)
    fonts = load_fonts()
    gen = TextGen(charset)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.glob("*.png"):
        p.unlink()
    rows = []
    fp = np.array(FONT_WEIGHTS) / sum(FONT_WEIGHTS)
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0])
        f = fonts[rng.choice(len(fonts), p=fp)]
        text, _cat = gen(rng, f["cmap"])
        img = make_image(i, text, f, seed)
        name = f"{i:06d}.png"
        Image.fromarray(img, "RGB").save(out_dir / name, optimize=True)
        rows.append((name, text))
    with open(out_dir / "labels.tsv", "w", encoding="utf-8", newline="\n") as fh:
        for name, text in rows:
            fh.write(f"{name}\t{text}\n")
    names = [r[0] for r in rows]
    with open(out_dir / "split.json", "w", encoding="utf-8") as fh:
        json.dump({"calib": names[:N_CALIB], "eval": names[N_CALIB:]}, fh, indent=1)
        fh.write("\n")
    (out_dir / "README.md").write_text(
        README.format(n=n, nc=N_CALIB, ne=n - N_CALIB, seed=seed, maxw=MAX_STORE_W,
                      fonts=", ".join(f"{f['face']} ({os.path.basename(f['path'])})" for f in fonts)),
        encoding="utf-8")
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"wrote {n} images to {out_dir} ({total / 1e6:.2f} MB)")


# --------------------------------------------------------------------------
# fp32 check (mirrors rapidocr_onnxruntime.ch_ppocr_rec.TextRecognizer, batch 1)
# --------------------------------------------------------------------------
def resize_norm_img(img_bgr, img_h=48, img_w=320):
    """Same as TextRecognizer.resize_norm_img with a batch of one image."""
    import cv2

    h, w = img_bgr.shape[:2]
    ratio = w / float(h)
    max_wh_ratio = max(img_w / img_h, ratio)
    width = int(img_h * max_wh_ratio)
    rw = width if math.ceil(img_h * ratio) > width else int(math.ceil(img_h * ratio))
    x = cv2.resize(img_bgr, (rw, img_h)).astype("float32")
    x = x.transpose((2, 0, 1)) / 255
    x -= 0.5
    x /= 0.5
    out = np.zeros((3, img_h, width), np.float32)
    out[:, :, :rw] = x
    return out


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


def recognize(paths):
    import cv2
    import onnxruntime as ort

    sess = ort.InferenceSession(str(rec_model_path()), providers=["CPUExecutionProvider"])
    chars = ["blank"] + sess.get_modelmeta().custom_metadata_map["character"].splitlines() + [" "]
    iname = sess.get_inputs()[0].name
    out = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)  # BGR, as RapidOCR's LoadImage gives
        x = resize_norm_img(img)[None]
        pred = sess.run(None, {iname: x})[0][0]
        idx = pred.argmax(-1)
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        keep &= idx != 0
        out.append("".join(chars[k] for k in idx[keep]))
    return out


def score(paths, labels, title, show=0):
    preds = recognize(paths)
    ed = sum(edit_distance(p, t) for p, t in zip(preds, labels))
    n = sum(len(t) for t in labels)
    acc = float(np.mean([p == t for p, t in zip(preds, labels)]))
    print(f"{title}: {len(labels)} lines, CER {ed / n:.4f} ({ed}/{n}), line accuracy {acc:.4f}")
    bad = [(p, t, pr) for p, t, pr in zip(paths, labels, preds) if pr != t]
    for p, t, pr in bad[:show]:
        print(f"  {Path(p).name}\tgt={t!r}\tpred={pr!r}")
    return ed / n, acc


def check(out_dir: Path, real: str | None, show: int):
    labels = {}
    with open(out_dir / "labels.tsv", encoding="utf-8") as fh:
        for line in fh:
            name, text = line.rstrip("\n").split("\t", 1)
            labels[name] = text
    split = json.loads((out_dir / "split.json").read_text(encoding="utf-8"))
    names = split["eval"]
    score([out_dir / n for n in names], [labels[n] for n in names], "ocr_synth eval (fp32)", show)
    if real:
        base = Path(real).parent
        paths, texts = [], []
        with open(real, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            ci, ti = header.index("crop"), header.index("text")
            for line in fh:
                cols = line.rstrip("\n").split("\t")
                paths.append(base / cols[ci])
                texts.append(cols[ti])
        score(paths, texts, "real crops (fp32)", 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("-n", type=int, default=N_IMAGES)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check", action="store_true", help="only run the fp32 recognizer check on the eval split")
    ap.add_argument("--real", default=None, help="optional labels.tsv (with header: crop, text) of real crops to score too")
    ap.add_argument("--show", type=int, default=0, help="print this many misrecognized eval lines")
    args = ap.parse_args()
    if args.check:
        check(args.out, args.real, args.show)
    else:
        generate(args.out, args.n, args.seed)


if __name__ == "__main__":
    main()
